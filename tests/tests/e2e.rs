//! End-to-end tests: the real worker binary, a real PostgreSQL with the extension, real HTTP.
