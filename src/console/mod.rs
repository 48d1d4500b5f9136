//! The console: the admin API's pages for a browser, at `/ui/`.

pub mod chart;
