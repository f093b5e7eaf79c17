"""`loopify bench`: a load generator of real /ws clients in separate processes.

    cli.py        options, exit codes, the run from start to report
    plan.py       who talks to whom: users, conversations, senders, workers, nodes (pure)
    servers.py    start and stop the servers the bench owns; CPU and memory of their processes
    provision.py  conversations over GraphQL, tokens, /health polling
    pool.py       the parent's side of the worker processes, with the progress line
    clients.py    one worker process: an asyncio loop driving many WebSocket clients
    scenarios.py  chat/group steps (and --max), connections
    stats.py      percentiles and latency summaries
    report.py     the JSON result (contract keys) and the summary table

It speaks only the public protocol (GraphQL over HTTP for setup, /ws for traffic, /health).
"""
