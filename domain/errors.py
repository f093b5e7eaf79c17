"""Domain errors: one base class, one subclass per broken rule.

Each interface maps these classes to its own error codes in a single table
(see `interfaces/errors.py`), so the names here describe the rule, not the transport.
"""

from __future__ import annotations


class DomainError(Exception):
    """A command was refused because it would break a rule of the domain."""


class InvalidInputError(DomainError):
    """The command's data is malformed (content, type, participant list...)."""


class InvalidContentError(InvalidInputError):
    """Message content is empty, too long, or holds forbidden control characters."""


class InvalidMessageTypeError(InvalidInputError):
    """`messageType` is not one of the known message types."""


class InvalidParticipantsError(InvalidInputError):
    """The participant list does not fit the conversation type."""


class InvalidConversationTypeError(InvalidInputError):
    """`type` is not DIRECT, GROUP or ITEM."""


class UnsupportedOperationError(InvalidInputError):
    """The operation does not exist for this kind of conversation (e.g. leaving a DIRECT chat)."""


class UnknownParentMessageError(InvalidInputError):
    """`parentMessageId` names no message of this conversation."""


class MessageDeletedError(InvalidInputError):
    """The message was deleted; it can no longer be edited or deleted again."""


class AccessDeniedError(DomainError):
    """The actor may not do this."""


class NotParticipantError(AccessDeniedError):
    """The actor is not an active participant of the conversation."""


class NotMessageSenderError(AccessDeniedError):
    """Only the sender of a message may edit or delete it."""


class NotFoundError(DomainError):
    """The thing named by the command does not exist."""


class ConversationNotFoundError(NotFoundError):
    """No conversation has this id."""


class MessageNotFoundError(NotFoundError):
    """No message has this id."""
