package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/relinkgo/relink/internal/netns"
)

// packetInfo is what parsePacket reads from one frame on the server's veth.
type packetInfo struct {
	// clientPort is the client's TCP port of the connection.
	clientPort uint16
	// synAck: the server accepted a connection (its SYN+ACK to the client).
	synAck bool
	// users are the user parts of the From URIs of the REGISTERs that start
	// in this segment's payload, in order.
	users []string
}

// Header sizes and fields of the frames a veth carries.
const (
	ethHeaderLen = 14
	ethTypeIPv4  = 0x0800
	protoTCP     = 6
	tcpFlagSYN   = 0x02
	tcpFlagACK   = 0x10
)

// parsePacket reads an Ethernet frame carrying IPv4 + TCP between ServerIP:port
// and a client. It reports ok=false for anything else (other ports, other
// protocols, truncated or malformed headers): the capture sees every frame of
// the namespace, and a client's bytes are peer input.
func parsePacket(frame []byte, server netip.Addr, port uint16) (packetInfo, bool) {
	var pi packetInfo
	if len(frame) < ethHeaderLen+20 || binary.BigEndian.Uint16(frame[12:14]) != ethTypeIPv4 {
		return pi, false
	}
	ip := frame[ethHeaderLen:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || ip[9] != protoTCP {
		return pi, false
	}
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if total < ihl+20 || total > len(ip) {
		return pi, false
	}
	if frag := binary.BigEndian.Uint16(ip[6:8]); frag&0x1fff != 0 {
		return pi, false // a later fragment: no TCP header
	}
	src, dst := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	tcp := ip[ihl:total]
	sport, dport := binary.BigEndian.Uint16(tcp[0:2]), binary.BigEndian.Uint16(tcp[2:4])
	off := int(tcp[12]>>4) * 4
	if off < 20 || off > len(tcp) {
		return pi, false
	}
	flags := tcp[13]
	switch {
	case src == server && sport == port:
		// From the server: only its SYN+ACK matters.
		pi.clientPort = dport
		pi.synAck = flags&(tcpFlagSYN|tcpFlagACK) == tcpFlagSYN|tcpFlagACK
		return pi, true
	case dst == server && dport == port:
		pi.clientPort = sport
		pi.users = registerUsers(tcp[off:])
		return pi, true
	}
	return pi, false
}

var (
	registerStart = []byte("REGISTER ")
	crlf          = []byte("\r\n")
)

// registerUsers returns the From users of the REGISTER requests that start
// in payload: at its beginning, or after a line break (CRLF keepalives or a
// previous message may precede them). A REGISTER whose From header is not in
// this segment, or has no sip:/sips: URI with a user, gives "".
func registerUsers(payload []byte) []string {
	var users []string
	for i := 0; i < len(payload); {
		j := bytes.Index(payload[i:], registerStart)
		if j < 0 {
			break
		}
		at := i + j
		i = at + len(registerStart)
		if at > 0 && payload[at-1] != '\n' {
			continue // "REGISTER " inside a header value
		}
		msg := payload[at:]
		if end := bytes.Index(msg, []byte("\r\n\r\n")); end >= 0 {
			msg = msg[:end]
		}
		users = append(users, fromUser(msg))
	}
	return users
}

// fromUser finds the From (or compact f) header in a message's header block
// and returns its URI's user part, "" if there is none.
func fromUser(msg []byte) string {
	for _, line := range bytes.Split(msg, crlf)[1:] {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		name = bytes.TrimSpace(name)
		if !bytes.EqualFold(name, []byte("From")) && !bytes.EqualFold(name, []byte("f")) {
			continue
		}
		for _, scheme := range [][]byte{[]byte("sip:"), []byte("sips:")} {
			k := bytes.Index(value, scheme)
			if k < 0 {
				continue
			}
			uri := value[k+len(scheme):]
			at := bytes.IndexByte(uri, '@')
			if at <= 0 {
				return ""
			}
			user := uri[:at]
			if bytes.ContainsAny(user, " \t<>;:\"") || len(user) > 128 {
				return ""
			}
			return string(user)
		}
		return ""
	}
	return ""
}

// event is one captured frame that matters: a SYN+ACK or a REGISTER, with
// the kernel's receive timestamp.
type event struct {
	at         time.Time
	clientPort uint16
	synAck     bool
	user       string // REGISTER's From user
}

// capture records, from an AF_PACKET socket on the server namespace's veth,
// every REGISTER sent to the registrar's port and every connection the
// registrar accepted. The frames are taken before netfilter's prerouting
// hook, so REGISTERs dropped by the black hole are seen too: analysis keeps
// only the REGISTERs on a connection the registrar accepted after the restore.
type capture struct {
	f      *os.File
	server netip.Addr
	port   uint16

	mu     sync.Mutex
	events []event
	frames int
	done   chan struct{}
}

// startCapture opens the socket in ns and reads until close.
func startCapture(ns *netns.Namespace, server netip.Addr, port uint16) (*capture, error) {
	var fd int
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName("veth0")
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto)
		if err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			unix.Close(fd)
			return fmt.Errorf("SO_TIMESTAMPNS: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("bind to veth0: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	c := &capture{f: os.NewFile(uintptr(fd), "packet"), server: server, port: port, done: make(chan struct{})}
	go c.read()
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// read receives frames until the socket is closed.
func (c *capture) read() {
	defer close(c.done)
	rc, err := c.f.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 65536)
	oob := make([]byte, 128)
	for {
		var n, oobn int
		var rerr error
		err := rc.Read(func(fd uintptr) bool {
			n, oobn, _, _, rerr = unix.Recvmsg(int(fd), buf, oob, 0)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if err != nil || (rerr != nil && !errors.Is(rerr, unix.EINTR)) {
			return
		}
		if rerr != nil {
			continue
		}
		c.handle(buf[:n], stamp(oob[:oobn]))
	}
}

func (c *capture) handle(frame []byte, at time.Time) {
	pi, ok := parsePacket(frame, c.server, c.port)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.frames++
	if !ok {
		return
	}
	if pi.synAck {
		c.events = append(c.events, event{at: at, clientPort: pi.clientPort, synAck: true})
	}
	for _, u := range pi.users {
		c.events = append(c.events, event{at: at, clientPort: pi.clientPort, user: u})
	}
}

// stamp returns the kernel's receive time from the control messages, or now.
func stamp(oob []byte) time.Time {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err == nil {
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_TIMESTAMPNS &&
				len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
				ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
				return time.Unix(ts.Unix())
			}
		}
	}
	return time.Now()
}

// close stops the capture and waits for its reader.
func (c *capture) close() {
	c.f.Close()
	<-c.done
}

// firstRegisters returns, per From user, the first REGISTER at or after
// since on a connection the registrar accepted (its SYN+ACK seen) at or after
// since: the first REGISTER the restarted registrar could read.
func (c *capture) firstRegisters(since time.Time) map[string]time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	accepted := make(map[uint16]bool)
	first := make(map[string]time.Time)
	for _, e := range c.events {
		if e.at.Before(since) {
			continue
		}
		if e.synAck {
			accepted[e.clientPort] = true
			continue
		}
		if _, seen := first[e.user]; !seen && accepted[e.clientPort] && e.user != "" {
			first[e.user] = e.at
		}
	}
	return first
}

// registersSince counts the REGISTER segments seen at or after since (the
// black hole's drops included).
func (c *capture) registersSince(since time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, e := range c.events {
		if !e.synAck && !e.at.Before(since) {
			n++
		}
	}
	return n
}
