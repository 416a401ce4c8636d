//go:build !linux

package main

import (
	"errors"
	"time"

	"github.com/relinkgo/relink/internal/netns"
)

// sniffer needs Linux (AF_PACKET); so does the Kamailio site that uses it.
type sniffer struct{}

func sniff(*netns.Namespace, int) (*sniffer, error) {
	return nil, errors.New("fleet: counting packets needs Linux")
}

func (*sniffer) since(time.Time) []time.Time { return nil }

func (*sniffer) close() {}
