-- One purger for the fleet (issue 28): each sidecar's purge tick first tries to take this
-- round with a conditional UPDATE, stamped on the fleet's one clock; only the one that finds the
-- last round at least a purge interval old purges, so a fleet of N sidecars deletes once per
-- interval instead of N times.
CREATE TABLE purge_round (
    id           SMALLINT PRIMARY KEY CHECK (id = 1),
    last_unix_ms BIGINT NOT NULL
);
INSERT INTO purge_round (id, last_unix_ms) VALUES (1, 0);
