//! The door of the open lane (issue 40): what any caller can cause without privilege —
//! Refresh, Revoke of a token it holds, RFC 7009, the change feed — is admitted at most
//! [`IN_FLIGHT_PER_CALLER`] at a time per caller address, before anything is decoded. The
//! store's lanes ([`crate::store::Lane`]) share the connection out fairly among what is
//! admitted; this bounds what one caller's refused surplus costs: a map lookup, not a token
//! decode and a queue visit each time.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Open requests of one caller in progress at most (its operations waiting for the store and
/// the one holding the connection, with room for the cheap steps around them).
pub const IN_FLIGHT_PER_CALLER: usize = crate::store::OPEN_PER_CALLER + 2;

/// Callers' open requests in progress.
#[derive(Debug, Default, Clone)]
pub struct OpenGate(Arc<Mutex<HashMap<Option<IpAddr>, usize>>>);

/// One admitted request; leaving (dropped) makes room for the caller's next.
#[derive(Debug)]
pub struct Admitted {
    gate: OpenGate,
    caller: Option<IpAddr>,
}

impl OpenGate {
    /// Admits one more request of `caller`, or None when it has its share in progress.
    pub fn admit(&self, caller: Option<IpAddr>) -> Option<Admitted> {
        let mut callers = self.0.lock();
        let in_flight = callers.entry(caller).or_insert(0);
        if *in_flight >= IN_FLIGHT_PER_CALLER {
            return None;
        }
        *in_flight += 1;
        Some(Admitted {
            gate: self.clone(),
            caller,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut callers = self.gate.0.lock();
        if let Some(in_flight) = callers.get_mut(&self.caller) {
            *in_flight -= 1;
            if *in_flight == 0 {
                callers.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_has_its_own_share() {
        let gate = OpenGate::default();
        let one = Some(IpAddr::from([127, 0, 0, 1]));
        let held: Vec<_> = (0..IN_FLIGHT_PER_CALLER)
            .map(|_| gate.admit(one).expect("within its share"))
            .collect();
        assert!(gate.admit(one).is_none(), "beyond its share");
        assert!(gate.admit(Some(IpAddr::from([127, 0, 0, 2]))).is_some());
        drop(held);
        assert!(gate.admit(one).is_some(), "room again");
        assert!(
            gate.0.lock().len() <= 1,
            "callers with nothing in flight are forgotten"
        );
    }
}
