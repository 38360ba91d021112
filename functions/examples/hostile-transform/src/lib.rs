//! A deliberately misbehaving row transform for floe's sandbox tests, written with
//! `floe-sdk`. A row's `hostile` column says what to do: `panic` panics (a trap),
//! `loop` never returns (the epoch deadline stops it); any other row is loaded as is.

use floe_sdk::{Action, RowChange, Transform};

pub struct Hostile;

impl Transform for Hostile {
    fn transform(change: &mut RowChange<'_>) -> Result<Action, String> {
        match change.str("hostile") {
            Some("panic") => panic!("hostile transform: asked to panic"),
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            _ => Ok(Action::Load),
        }
    }
}

floe_sdk::export_transform!(Hostile);
