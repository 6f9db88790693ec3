-- A server's rollout (control_plane/rollout/): one row per server, its record as JSON in Body,
-- the driver holding it (Holder) and until when (LeaseExpiresAt). The watch never reads it.
CREATE TABLE Rollouts (
    Server STRING(512) NOT NULL,
    State STRING(64) NOT NULL,
    Holder STRING(512) NOT NULL,
    LeaseExpiresAt FLOAT64 NOT NULL,
    WrittenAt FLOAT64 NOT NULL,
    Body STRING(MAX) NOT NULL,
) PRIMARY KEY (Server);
