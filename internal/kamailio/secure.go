package kamailio

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
)

// secureListeners picks the ports of the TLS, WS and WSS listeners asked
// for, makes the instance's CA and server certificate and writes the tls
// module's configuration.
func (k *Instance) secureListeners(data *configData) error {
	o := &k.opts
	if !o.TLS && !o.WebSocket {
		return nil
	}
	host, _, err := net.SplitHostPort(k.addr)
	if err != nil {
		return fmt.Errorf("kamailio: %w", err)
	}
	pick := func() (string, string, error) {
		p, err := freePort()
		if err != nil {
			return "", "", err
		}
		ps := strconv.Itoa(p)
		return net.JoinHostPort(host, ps), ps, nil
	}
	if o.WebSocket {
		if k.wsAddr, data.WSPort, err = pick(); err != nil {
			return err
		}
		data.WSListen = k.wsAddr
	}
	if !o.TLS {
		return nil
	}
	if k.tlsAddr, _, err = pick(); err != nil {
		return err
	}
	data.TLSListen = k.tlsAddr
	if o.WebSocket {
		if k.wssAddr, data.WSSPort, err = pick(); err != nil {
			return err
		}
		data.WSSListen = k.wssAddr
	}
	if k.ca, err = NewCA("relink test CA"); err != nil {
		return err
	}
	cert, key, ca, err := k.ca.writeServerFiles(k.dir, host)
	if err != nil {
		return err
	}
	data.TLSConfig = filepath.Join(k.dir, "tls.cfg")
	return os.WriteFile(data.TLSConfig, []byte(tlsConfig(cert, key, ca, o.RequireClientCert)), 0o600)
}

// tlsConfig is the tls module's configuration file: the server
// certificate on every TLS port, client certificates checked against the
// instance's CA when required.
func tlsConfig(cert, key, ca string, requireClient bool) string {
	verify := "no"
	if requireClient {
		verify = "yes"
	}
	return "[server:default]\n" +
		"method = TLSv1.2+\n" +
		"verify_certificate = " + verify + "\n" +
		"require_certificate = " + verify + "\n" +
		"certificate = " + cert + "\n" +
		"private_key = " + key + "\n" +
		"ca_list = " + ca + "\n\n" +
		"[client:default]\n" +
		"verify_certificate = no\n" +
		"require_certificate = no\n"
}

// TLSAddr is the host:port of the TLS listener ("" without Options.TLS).
func (k *Instance) TLSAddr() string { return k.tlsAddr }

// WSAddr is the host:port of the WebSocket listener ("" without
// Options.WebSocket).
func (k *Instance) WSAddr() string { return k.wsAddr }

// WSSAddr is the host:port of the secure WebSocket listener ("" without
// both Options.TLS and Options.WebSocket).
func (k *Instance) WSSAddr() string { return k.wssAddr }

// CA is the instance's certificate authority (nil without Options.TLS):
// CA().Pool() for a client's RootCAs, CA().Issue for client certificates.
func (k *Instance) CA() *CA { return k.ca }

// TLSURI is the registrar URI over TLS: "sips:HOST:PORT" ("" without
// Options.TLS).
func (k *Instance) TLSURI() string {
	if k.tlsAddr == "" {
		return ""
	}
	return "sips:" + k.tlsAddr
}

// WSURI is the registrar URI over WebSocket:
// "sip:HOST:PORT;transport=ws" ("" without Options.WebSocket).
func (k *Instance) WSURI() string {
	if k.wsAddr == "" {
		return ""
	}
	return "sip:" + k.wsAddr + ";transport=ws"
}

// WSSURI is the registrar URI over secure WebSocket:
// "sips:HOST:PORT;transport=ws" ("" without TLS and WebSocket).
func (k *Instance) WSSURI() string {
	if k.wssAddr == "" {
		return ""
	}
	return "sips:" + k.wssAddr + ";transport=ws"
}
