package main

import (
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/relinkgo/relink/internal/netns"
)

// sniffer counts the REGISTERs arriving at a TCP port of a network namespace
// as they cross its interfaces (an AF_PACKET socket, before netfilter), with
// their arrival times: the load the registrar sees, counted at the
// registrar, whatever its kind.
type sniffer struct {
	f    *os.File
	port int
	done chan struct{}

	mu sync.Mutex
	at []time.Time
}

// sniff starts counting in ns.
func sniff(ns *netns.Namespace, port int) (*sniffer, error) {
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC,
			int(htons(unix.ETH_P_IP)))
		return err
	})
	if err != nil {
		return nil, err
	}
	// Room for a herd's packets while this process is busy (root may
	// exceed rmem_max).
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
	s := &sniffer{f: os.NewFile(uintptr(fd), "packets"), port: port, done: make(chan struct{})}
	go s.read()
	return s, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (s *sniffer) read() {
	defer close(s.done)
	buf := make([]byte, 1<<16)
	for {
		n, err := s.f.Read(buf)
		if err != nil {
			return
		}
		now := time.Now()
		if k := registers(buf[:n], s.port); k > 0 {
			s.mu.Lock()
			for range k {
				s.at = append(s.at, now)
			}
			s.mu.Unlock()
		}
	}
}

// since returns the arrivals at or after t, sorted.
func (s *sniffer) since(t time.Time) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return after(s.at, t)
}

func (s *sniffer) close() {
	s.f.Close()
	<-s.done
}
