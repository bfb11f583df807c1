-- Runs once, when the PostgreSQL volume is created: Label Studio gets its own database next to ctphase's
-- (same server and role; `ctphase` is created from POSTGRES_USER/POSTGRES_DB by the image).
CREATE DATABASE labelstudio OWNER ctphase;
