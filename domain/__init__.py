"""The write model: the `Conversation` aggregate, its events, value objects and rules.

Pure: nothing here performs I/O or imports another layer of the project.
"""
