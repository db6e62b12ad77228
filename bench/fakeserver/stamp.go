package main

import (
	"bytes"
	"net/http"
	"strconv"
	"time"
)

// stampDeltas makes every response.output_text.delta of a /v1/responses
// stream begin with the wall-clock time it was written, as
// "~<unix nanoseconds>~". The load harness reads the stamp where the text
// arrives (straight from the fake, or through Caddy as a ChatKit
// text_delta) to time each event's trip; the machine's one clock serves
// both processes.
func stampDeltas(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&stampWriter{ResponseWriter: w}, r)
	})
}

var (
	deltaEvent = []byte("event: response.output_text.delta\n")
	deltaField = []byte(`"delta":"`)
)

// stampWriter rewrites the frames the fake writes: one Write per SSE event.
type stampWriter struct {
	http.ResponseWriter
	buf []byte
}

func (s *stampWriter) Write(b []byte) (int, error) {
	i := bytes.Index(b, deltaField)
	if !bytes.HasPrefix(b, deltaEvent) || i < 0 {
		return s.ResponseWriter.Write(b)
	}
	i += len(deltaField)
	s.buf = append(s.buf[:0], b[:i]...)
	s.buf = append(s.buf, '~')
	s.buf = strconv.AppendInt(s.buf, time.Now().UnixNano(), 10)
	s.buf = append(s.buf, '~')
	s.buf = append(s.buf, b[i:]...)
	if _, err := s.ResponseWriter.Write(s.buf); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Unwrap lets http.ResponseController reach the real writer's Flush.
func (s *stampWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }
