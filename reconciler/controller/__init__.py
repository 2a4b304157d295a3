"""The reconciliation controller behind ``reconciler serve``: leader election, the
loop (schedule, events, auto-apply), the SQS consumer, and on-demand runs.

Level-triggered: events only say *which top keys* (models, products …) to look at soon;
every run lists the bucket and plans afresh. One replica per database leads (a PostgreSQL session
advisory lock held on a dedicated connection, re-tried every few seconds with
jitter); only the leader runs the schedule, turns stored events into runs, consumes
SQS and auto-applies. Every replica serves the API, accepts webhooks (events are
stored in the database, so any replica can take them) and runs what a person asks for.
Two leaders for a moment are harmless: apply's own lock and stale check are the fence.

Why a session lock and not a lease row: PostgreSQL releases it the moment the
leader's connection ends — ``kill -9``, a crash, a lost network — so failover is
bounded by the followers' retry interval, not by a lease's length; and the leader
learns it lost the lock when its connection fails, at which point it stops at once.
The price: it needs a real session. A transaction-pooling PgBouncer hands the
session to other clients between transactions and breaks it (use session pooling
or a direct connection for ``serve``).
"""
