//! Delivery history for the console's charts.
