"""The store is the queue: which job a pool's free slot goes to, and each replica's slots."""
