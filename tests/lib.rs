//! Black-box tests of the whole broker, driven by public clients (the
//! `[[test]]` targets beside this file; the Python clients are under
//! `clients/`).
