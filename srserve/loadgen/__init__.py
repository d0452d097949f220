"""Load generation against a running srserve: arrivals, request mixes, clients, records, statistics."""
