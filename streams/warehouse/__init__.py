"""The warehouse: the embedded ClickHouse (chdb) and the HTTP server that owns it."""
