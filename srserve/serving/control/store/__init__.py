"""The job store: PostgreSQL, its connections, clock, migrations, and the statements that admit and price."""
