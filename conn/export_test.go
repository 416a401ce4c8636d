package conn

// ProbeNow sends one probe on c the way its liveness monitor does when a
// probe is due (TryProbe, else Probe), for the per-probe benchmarks.
func ProbeNow(c *Conn) error {
	if tried, err := c.tryProbe(); tried {
		return err
	}
	return c.probe()
}
