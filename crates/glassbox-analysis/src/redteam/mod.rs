//! The red team's attacks on monitors: [`attacks`] rewrites a payload the way published
//! jailbreaks do (templates, encodings, splitting, multi-turn escalation); [`gcg`](mod@gcg) searches
//! with the model's gradients for text that lowers a monitor's score while keeping the
//! payload, and bounds such attacks from above in embedding space; [`recovery`](mod@recovery) tries to bring a
//! clamped feature's behaviour back through the dictionary's error term. Running them against a
//! deployment and scoring the outcome is `glassbox redteam`'s job.

pub mod attacks;
pub mod gcg;
pub mod recovery;

pub use attacks::{apply, Attack, Materials};
pub use gcg::{
    gcg, one_sentence_payload, residual, Differentiable, Framing, GcgConfig, GcgResult,
    LatentReadout, Readout, ResidualResult, SentenceReadout,
};
pub use recovery::{recovery, Clamp, Recovery};
