"""Capacity planning: stage profiles, a discrete-event simulation of the pools, and the ratio search."""
