//! The fleet's one clock (SPEC §4 rule 9): this process's skew from the database's clock, how
//! sure that reading is, and the Issue/Refresh it refused while off.
use super::Registrar;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// `clock_*`.
pub struct ClockMetrics {
    /// This process's wall clock minus the fleet's (the database's), in milliseconds.
    pub skew_ms: Gauge,
    /// How far this process's reading of the fleet's clock may be off, in µs (-1: not read).
    pub uncertainty_us: Gauge,
    /// 1 while the fleet's clock has been read and the skew is within --max-clock-skew.
    pub in_step: Gauge,
    /// Issue and Refresh refused because this instance's clock is off the fleet's.
    pub refusals: Counter,
}

impl ClockMetrics {
    /// Registers the families.
    pub fn register(registry: &mut Registrar) -> Self {
        let this = Self {
            skew_ms: Gauge::default(),
            uncertainty_us: Gauge::default(),
            in_step: Gauge::default(),
            refusals: Counter::default(),
        };
        registry.register(
            "clock_skew_ms",
            "This process's wall clock minus the database's (the fleet's one clock), in ms",
            this.skew_ms.clone(),
        );
        registry.register(
            "clock_uncertainty_us",
            "How far this process's reading of the database's clock may be off, in µs (half the \
             quickest recent round trip, plus drift); -1 until read",
            this.uncertainty_us.clone(),
        );
        registry.register(
            "clock_in_step",
            "1 while the database's clock has been read and this process's is within \
             --max-clock-skew of it; 0 while Issue and Refresh are refused",
            this.in_step.clone(),
        );
        registry.register(
            "clock_refusals",
            "Issue and Refresh refused because this process's clock is off the database's",
            this.refusals.clone(),
        );
        this
    }
}
