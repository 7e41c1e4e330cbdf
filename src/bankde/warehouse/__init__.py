"""The warehouse stage: ClickHouse client (chDB or server), lock, DDL, CDC sink."""
