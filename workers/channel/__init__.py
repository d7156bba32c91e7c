"""The job channel: how a job and its reply travel between processes.  No pika here.

In the order a job travels: a front-end's ``JobSender`` (``sender.py``,
opsevent's ``Transport``) builds the job's bytes (``job.py``) and writes
them into the one shared ``JobQueue`` (``jobqueue.py``, a pipe made
pre-fork); the RabbitMQ worker reads them, and a sync caller's status comes
back as a datagram on its process's reply pipe (``replies.py``).  The
subscription table every process raises from is in shared memory
(``shared.py``).  Only plain data crosses a process boundary: bytes the
front-end built, and JSON.
"""
