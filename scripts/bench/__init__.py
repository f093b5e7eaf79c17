"""`loopify bench`: a load generator of real /ws clients in separate processes.

    cli.py        options, exit codes, the run from start to report
    plan.py       who talks to whom: users, conversations, senders, workers, nodes (pure)
    servers.py    start and stop the servers the bench owns
    metering.py   CPU seconds and peak memory of the servers, Postgres/Redis and the bench itself
    provision.py  conversations over GraphQL; /health polling until the read model caught up
    pool.py       the parent's side of the worker processes
    progress.py   the once-a-second progress line and the /health poller behind it
    clients.py    one worker process: an asyncio loop driving many WebSocket clients
    ledger.py     what each device received, and the verdict: lost, duplicated, out of order
    scenarios.py  chat/group steps (and --max), connections
    stats.py      percentiles and latency summaries
    report.py     the JSON result (contract keys) and the summary table

It speaks only the public protocol (GraphQL over HTTP for setup, /ws for traffic, /health).
"""
