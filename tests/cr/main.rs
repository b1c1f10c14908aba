//! C/R tests
