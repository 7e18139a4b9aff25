"""The paper broker: a simulated market and brokerage persisted in the database, so the whole
product works without an account at a real broker."""
