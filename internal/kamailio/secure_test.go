package kamailio

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/relinkgo/relink/internal/testkit"
)

// TestSecureTransports: with TLS and WebSocket on, Kamailio registers over
// TLS (its certificate verified against the instance's CA), WS and WSS.
func TestSecureTransports(t *testing.T) {
	k := Start(t, Options{TLS: true, WebSocket: true})
	c := testkit.NewSipgoClient(t, sipgo.WithUserAgenTLSConfig(&tls.Config{RootCAs: k.CA().Pool()}))
	for _, tc := range []struct{ name, uri string }{
		{"tls", "sip:" + k.TLSAddr() + ";transport=tls"},
		{"ws", k.WSURI()},
		{"wss", "sip:" + k.WSSAddr() + ";transport=wss"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newClientOn(t, c, tc.uri, "sec-"+tc.name, k.Password())
			if res := r.register(60); res.StatusCode != 200 {
				t.Fatalf("%s: %v", tc.uri, res.StartLine())
			}
		})
	}
	if st := stats(t, k); st.Contacts != 3 {
		t.Errorf("%d contacts, want 3", st.Contacts)
	}
}

// TestTLSUntrusted: a client that does not trust the instance's CA fails
// the handshake.
func TestTLSUntrusted(t *testing.T) {
	k := Start(t, Options{TLS: true})
	d := tls.Dialer{Config: &tls.Config{ServerName: ServerName}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", k.TLSAddr())
	if err == nil {
		c.Close()
		t.Fatal("handshake with an untrusted server certificate succeeded")
	}
	d.Config.RootCAs = k.CA().Pool()
	c, err = d.DialContext(ctx, "tcp", k.TLSAddr())
	if err != nil {
		t.Fatalf("trusted handshake: %v", err)
	}
	c.Close()
}

// TestRequireClientCert: with RequireClientCert the TLS port refuses a
// client without a certificate of the instance's CA.
func TestRequireClientCert(t *testing.T) {
	k := Start(t, Options{TLS: true, RequireClientCert: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	try := func(cfg *tls.Config) error {
		d := tls.Dialer{Config: cfg}
		c, err := d.DialContext(ctx, "tcp", k.TLSAddr())
		if err != nil {
			return err
		}
		defer c.Close()
		// TLS 1.3: the server's refusal arrives after the client's Finished.
		if _, err := c.Write([]byte("\r\n\r\n")); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 8))
		return err
	}
	if err := try(&tls.Config{RootCAs: k.CA().Pool(), ServerName: ServerName}); err == nil {
		t.Error("handshake without a client certificate succeeded")
	}
	cert, err := k.CA().Issue("carrier-a")
	if err != nil {
		t.Fatal(err)
	}
	if err := try(&tls.Config{RootCAs: k.CA().Pool(), ServerName: ServerName,
		Certificates: []tls.Certificate{cert}}); err != nil {
		t.Errorf("with a client certificate: %v", err)
	}
}

// TestNoCRLFAnswer: with NoCRLFAnswer a CRLF ping gets no pong, on TCP and
// on WebSocket, while an OPTIONS on the same connection is answered.
func TestNoCRLFAnswer(t *testing.T) {
	k := Start(t, Options{NoCRLFAnswer: true, WebSocket: true})
	conn, err := net.Dial("tcp", k.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 512)
	if n, err := conn.Read(buf); err == nil {
		t.Fatalf("pong %q with NoCRLFAnswer", buf[:n])
	}
	if r := options(t, conn, k.Addr(), "TCP"); !strings.HasPrefix(r, "SIP/2.0 200") {
		t.Errorf("OPTIONS after the ping: %q", r)
	}
}

// options sends an OPTIONS on conn and returns the first line read.
func options(t *testing.T, conn net.Conn, addr, tp string) string {
	t.Helper()
	la := conn.LocalAddr().String()
	msg := "OPTIONS sip:" + addr + " SIP/2.0\r\n" +
		"Via: SIP/2.0/" + tp + " " + la + ";branch=z9hG4bK-" + strings.ReplaceAll(la, ":", "-") + "\r\n" +
		"From: <sip:probe@relink.test>;tag=1\r\nTo: <sip:" + addr + ">\r\nCall-ID: opt-" + la + "\r\n" +
		"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 2048)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("OPTIONS: %v", err)
	}
	line, _, _ := strings.Cut(string(buf[:n]), "\r\n")
	return line
}

// TestWebSocketCRLF: Kamailio's websocket module answers a CRLF ping in a
// text frame with a CRLF pong whatever NoCRLFAnswer says (the option acts
// on TCP and TLS only).
func TestWebSocketCRLF(t *testing.T) {
	for _, noAnswer := range []bool{false, true} {
		k := Start(t, Options{WebSocket: true, NoCRLFAnswer: noAnswer})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		d := ws.Dialer{Protocols: []string{"sip"}}
		conn, _, _, err := d.Dial(ctx, "ws://"+k.WSAddr())
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if err := wsutil.WriteClientText(conn, []byte("\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		data, op, err := wsutil.ReadServerData(conn)
		conn.Close()
		if err != nil || op != ws.OpText || string(data) != "\r\n" {
			t.Errorf("NoCRLFAnswer %v: CRLF text frame answered %q (op %v, %v), want a CRLF text frame", noAnswer, data, op, err)
		}
	}
}
