pub mod catalog;
pub mod eval_dict;
pub mod generate;
pub mod harvest;
pub mod models;
pub mod run;
pub mod setup;
pub mod train_dict;
