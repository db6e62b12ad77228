package chatkit

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// firstReadRecorder remembers how large a buffer the first Read was given,
// which is what the reader allocated before any byte arrived.
type firstReadRecorder struct {
	r     io.Reader
	first int
}

func (f *firstReadRecorder) Read(p []byte) (int, error) {
	if f.first == 0 {
		f.first = len(p)
	}
	return f.r.Read(p)
}

// errReader fails like a connection that broke.
type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

// A client's Content-Length is a promise, not bytes: the first allocation
// must not follow it (a stalled body promising 1 MiB would pin 1 MiB).
func TestBodyFirstAllocationIgnoresContentLength(t *testing.T) {
	const promised = 1 << 20
	rec := &firstReadRecorder{r: bytes.NewReader([]byte(`{"type":"threads.create"`))}
	r := httptest.NewRequest(http.MethodPost, "/chatkit", rec)
	r.ContentLength = promised
	if _, _, err := readBody(r, promised); err != nil {
		t.Fatal(err)
	}
	if rec.first == 0 || rec.first > 64<<10 {
		t.Fatalf("first read offered a %d-byte buffer for a body that promised %d bytes and sent 24: want a few KiB at most", rec.first, promised)
	}

	// A body that stops halfway holds at most twice what it sent.
	const sent = 40 << 10
	r = httptest.NewRequest(http.MethodPost, "/chatkit", io.MultiReader(bytes.NewReader(bytes.Repeat([]byte("s"), sent)), errReader{}))
	r.ContentLength = promised
	partial, _, err := readBody(r, promised)
	if err == nil || len(partial) != sent {
		t.Fatalf("a body cut after %d bytes: read %d, err %v", sent, len(partial), err)
	}
	if cap(partial) > 2*sent+4<<10 {
		t.Fatalf("a body that promised %d bytes and sent %d holds a %d-byte buffer", promised, sent, cap(partial))
	}

	// A whole body that fits the first buffer is read into one allocation
	// of its own size (plus the byte that meets the EOF).
	body := bytes.Repeat([]byte("x"), 1000)
	r = httptest.NewRequest(http.MethodPost, "/chatkit", bytes.NewReader(body))
	got, _, err := readBody(r, promised)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("readBody = %d bytes, %v", len(got), err)
	}
	if cap(got) > len(body)+1 {
		t.Fatalf("a %d-byte body with its Content-Length got a %d-byte buffer", len(body), cap(got))
	}
}

// A body that arrives is buffered as it arrives: growth by half, so the
// buffer stays within 1.5 times what it holds.
func TestBodyGrowsModestly(t *testing.T) {
	for _, n := range []int{5000, 100_000, 700_000} {
		body := bytes.Repeat([]byte("y"), n)
		r := httptest.NewRequest(http.MethodPost, "/chatkit", io.MultiReader(bytes.NewReader(body))) // no length: chunked
		got, tooLarge, err := readBody(r, 1<<20)
		if err != nil || tooLarge || !bytes.Equal(got, body) {
			t.Fatalf("n=%d: %d bytes, tooLarge %v, %v", n, len(got), tooLarge, err)
		}
		if limit := n + n/2 + 4<<10; cap(got) > limit {
			t.Fatalf("n=%d: buffer of %d bytes, over 1.5× the body", n, cap(got))
		}
	}
}

// OpenAI's answers come with a length: reading one must cost exactly one
// buffer of that size, not the 2–4× bytes.Buffer.ReadFrom leaves.
func TestReadCappedExactWithKnownLength(t *testing.T) {
	for _, n := range []int{0, 1, 511, 512, 4096, 90_000, 1 << 20} {
		payload := bytes.Repeat([]byte("z"), n)
		rd := bytes.NewReader(payload)
		var got []byte
		var err error
		allocs := testing.AllocsPerRun(20, func() {
			rd.Reset(payload)
			got, err = readCapped(rd, int64(n), maxUpstreamBody+1)
		})
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("n=%d: %d bytes, %v", n, len(got), err)
		}
		if cap(got) > n+1 {
			t.Fatalf("n=%d: buffer of %d bytes for a %d-byte answer of known length", n, cap(got), n)
		}
		if allocs != 1 {
			t.Fatalf("n=%d: %.0f allocations, want 1", n, allocs)
		}
	}

	// Without a length the buffer grows by half, and a lying length costs
	// grows, never more than the cap.
	payload := bytes.Repeat([]byte("w"), 300_000)
	got, err := readCapped(bytes.NewReader(payload), -1, maxUpstreamBody+1)
	if err != nil || len(got) != len(payload) || cap(got) > len(payload)*3/2+4<<10 {
		t.Fatalf("unknown length: %d bytes in a %d-byte buffer, %v", len(got), cap(got), err)
	}
	got, err = readCapped(bytes.NewReader(payload), 10, maxUpstreamBody+1)
	if err != nil || len(got) != len(payload) {
		t.Fatalf("short announced length: %d bytes, %v", len(got), err)
	}
	big := bytes.Repeat([]byte("v"), maxUpstreamBody+100)
	got, _ = readCapped(bytes.NewReader(big), -1, maxUpstreamBody+1)
	if len(got) != maxUpstreamBody+1 || cap(got) > maxUpstreamBody+1 {
		t.Fatalf("over the cap: read %d bytes into %d, want exactly the cap %d", len(got), cap(got), maxUpstreamBody+1)
	}
}

// The inspected bytes reach the backend once and are then let go, so a
// client that stops reading the answer pins no copy of its request.
func TestBodySpentBodyLetsGo(t *testing.T) {
	b := &spentBody{rest: []byte(`{"type":"threads.list"}`)}
	got, err := io.ReadAll(b)
	if err != nil || string(got) != `{"type":"threads.list"}` {
		t.Fatalf("read %q, %v", got, err)
	}
	if b.rest != nil {
		t.Fatal("the body still references its bytes after EOF")
	}
}

func TestBodyPendingBounds(t *testing.T) {
	p := newPendingBodies()
	p.maxPerClient, p.maxBytes = 2, 300
	a, b := stringBucketKey("a"), stringBucketKey("b")
	for i := 0; i < 2; i++ {
		if _, ok := p.enter(a, 100); !ok {
			t.Fatalf("client a refused at %d", i)
		}
	}
	if refusal, ok := p.enter(a, 1); ok || refusal != answerTooManyPending {
		t.Fatalf("third read of client a: ok=%v %v", ok, refusal)
	}
	if _, ok := p.enter(b, 100); !ok {
		t.Fatal("client b refused while under both bounds")
	}
	if refusal, ok := p.enter(b, 1); ok || refusal != answerServerBusy {
		t.Fatalf("read past the byte budget: ok=%v %v", ok, refusal)
	}
	p.leave(a, 100)
	if _, ok := p.enter(b, 100); !ok {
		t.Fatal("a freed slot was not reusable")
	}
	p.leave(a, 100)
	p.leave(b, 100)
	p.leave(b, 100)
	if p.pending() != 0 || p.reserved != 0 || len(p.perClient) != 0 {
		t.Fatalf("after every leave: %d pending, %d bytes reserved, %d clients tracked", p.pending(), p.reserved, len(p.perClient))
	}
	// A lone read larger than the whole budget still goes through.
	if _, ok := p.enter(a, 1000); !ok {
		t.Fatal("a lone read over the budget was refused")
	}
}
