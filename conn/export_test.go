package conn

// ProbeNow sends one probe on c the way its liveness monitor does, for the
// per-probe benchmarks.
func ProbeNow(c *Conn) error { return c.probe() }
