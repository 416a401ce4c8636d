package sip

import (
	"strings"
	"testing"
	"time"

	"github.com/relinkgo/relink/internal/kamailio"
)

// TestOutboundKamailio: against a real Kamailio, a trunk registers with
// +sip.instance and reg-id (RFC 5626), its flow is closed, and it
// re-registers on a new connection with the same Contact: Kamailio holds ONE
// binding for it, with that Contact, before and after.
func TestOutboundKamailio(t *testing.T) {
	k := kamailio.Start(t, kamailio.Options{MinExpires: -1})
	ua := newTestUA(t)
	ch := &changes{}
	tr, err := NewTrunk(ua, TrunkConfig{Registrars: []string{k.URI()}, AOR: "sip:olive@relink.test",
		Password: k.Password(), KeepAlive: 300 * time.Millisecond, KeepAliveTimeout: 300 * time.Millisecond,
		OnStateChange: ch.add})
	if err != nil {
		t.Fatal(err)
	}
	stop := running(t, tr)
	waitState(t, tr, Registered, 5*time.Second)
	b1, _ := tr.Binding()
	c1, err := k.Contacts("olive")
	if err != nil || len(c1) != 1 {
		t.Fatalf("contacts %+v %v", c1, err)
	}
	pool := ua.UserAgent().TransportLayer().Pool("tcp")
	old := pool.Get(k.Addr())
	if old == nil {
		t.Fatal("no pooled connection to Kamailio")
	}
	old.TryClose()
	old.Close() // the flow ends; the trunk registers again on a new connection
	waitState(t, tr, Registering, 3*time.Second)
	waitState(t, tr, Registered, 5*time.Second)
	b2, _ := tr.Binding()
	c2, err := k.Contacts("olive")
	if err != nil {
		t.Fatal(err)
	}
	if cur := pool.Get(k.Addr()); cur == nil || cur == old {
		t.Fatal("not re-registered on a new connection")
	} else {
		cur.TryClose()
	}
	// Kamailio keeps the RFC 5626 keys of the binding (ul.lookup shows them).
	if out, err := k.Kamcmd("ul.lookup", "location", "olive"); err != nil ||
		!strings.Contains(out, "Instance: <"+ua.InstanceID()+">") || !strings.Contains(out, "Reg-Id: 1") {
		t.Errorf("ul.lookup %v: %s\nwant Instance <%s> and Reg-Id 1", err, out, ua.InstanceID())
	}
	t.Logf("Kamailio's contacts: %+v then %+v; binding %+v", c1, c2, b2)
	if b2.Contact != b1.Contact || !strings.Contains(b2.Contact, ";ob") || b2.RegID != 1 ||
		!strings.HasPrefix(b2.InstanceID, "urn:uuid:") {
		t.Errorf("bindings %+v then %+v: want one Contact with ;ob, reg-id 1, an instance", b1, b2)
	}
	if len(c2) != 1 || c2[0].URI != c1[0].URI || c2[0].CallID != c1[0].CallID || c2[0].CSeq <= c1[0].CSeq {
		t.Errorf("Kamailio holds %+v after the reconnect, want the one binding %+v refreshed", c2, c1)
	}
	if len(c2) == 1 && !strings.Contains(c2[0].URI, ";ob") {
		t.Errorf("Kamailio's Contact %q lacks ;ob", c2[0].URI)
	}
	stop() // the unregistration (with the same instance and reg-id) removes it
	if c, err := k.Contacts("olive"); err != nil || len(c) != 0 {
		t.Errorf("contacts after Run returned: %+v %v", c, err)
	}
}
