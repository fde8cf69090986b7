"""Small helpers shared across medcore."""
