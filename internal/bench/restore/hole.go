package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"github.com/relinkgo/relink/internal/netns"
)

// hole is the black hole of one round: nft rules that drop the registrar
// port's TCP packets where they arrive, in the server namespace (to the
// port) and in the client namespace (from it). netns.Pair.BlackHole does the
// same but lifts the server side first; here the client side goes first, so
// that the path comes back in one step, the server side's removal, whose
// start is the clock's zero (a SYN let through before the replies can pass
// would wait a second for the server's SYN+ACK retransmission: an artefact
// of the bench, not of the trunk).
type hole struct {
	server, client string // namespace names
	table          string
}

func newHole(p *netns.Pair, port int) (*hole, error) {
	h := &hole{server: p.Server().Name(), client: p.Client().Name(), table: "relink_restore_" + strconv.Itoa(port)}
	for _, side := range []struct{ ns, match string }{{h.server, "tcp dport"}, {h.client, "tcp sport"}} {
		rules := fmt.Sprintf("table inet %s {\n chain pre {\n  type filter hook prerouting priority raw; policy accept;\n  %s %d drop\n }\n}\n",
			h.table, side.match, port)
		if err := nft(side.ns, strings.NewReader(rules), "-f", "-"); err != nil {
			_ = h.lift(h.client)
			_ = h.lift(h.server)
			return nil, err
		}
	}
	return h, nil
}

// lift removes the rules of one namespace (gone already: no error).
func (h *hole) lift(ns string) error {
	err := nft(ns, nil, "delete", "table", "inet", h.table)
	if err != nil && strings.Contains(err.Error(), "No such file or directory") {
		return nil
	}
	return err
}

func nft(ns string, stdin *strings.Reader, args ...string) error {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nft %s in %s: %w: %s", strings.Join(args, " "), ns, err, strings.TrimSpace(out.String()))
	}
	return nil
}
