//go:build !linux

package sip

// hangups is a no-op outside Linux: a flow the peer closed or reset is
// noticed at its next probe (sipgo's reader has then dropped it from its
// pool).
type hangups struct{}

func newHangups() *hangups    { return &hangups{} }
func (*hangups) watch(*flow)  {}
func (*hangups) forget(*flow) {}
func (*hangups) close()       {}
