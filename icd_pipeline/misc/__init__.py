"""Small helpers shared by the stages: atomic outputs, device choice, seeding, logging."""
