"""The Queue port's adapters: RabbitMQ quorum queues (amqp.py) and a SQLite table (sqlite.py)."""
