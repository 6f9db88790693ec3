-- Each control-plane process's published load (control_plane/fleet/): one row per publisher,
-- written every report interval. The watch never reads it: writing one re-routes nothing.
CREATE TABLE LoadPublishers (
    Publisher STRING(512) NOT NULL,
    PublisherGroup STRING(512) NOT NULL,
    WrittenAt FLOAT64 NOT NULL,
    ReportInterval FLOAT64 NOT NULL,
    Totals BYTES(MAX) NOT NULL,
) PRIMARY KEY (Publisher);
CREATE INDEX LoadPublishersByWrittenAt ON LoadPublishers(WrittenAt);
