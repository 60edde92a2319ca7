pub mod generate;
pub mod models;
pub mod run;
pub mod setup;
