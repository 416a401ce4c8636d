package main

import (
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// The login protocol, one line each way:
//
//	client: LOGIN <id>
//	server: OK                      (logged in; the session stays open)
//	server: BUSY retry-after=<s>    (refused; try again after s seconds)
//	server: BUSY                    (refused, no hint)
//
// Blank lines are skipped (a probe's answer, if the client probes).

// Errors of the login protocol.
var (
	// errBusy is the server's refusal, wrapped by login's errors.
	errBusy = errors.New("login: server busy")
	// errBadAnswer is wrapped by the error of an answer that is not the
	// protocol's.
	errBadAnswer = errors.New("login: bad answer")
)

// maxAnswer bounds an answer line: a peer that sends more is not speaking
// the protocol.
const maxAnswer = 64

// maxRetryAfter bounds the hint a server may give; a larger one is an error.
const maxRetryAfter = time.Hour

// answer is the server's answer to a LOGIN.
type answer struct {
	ok         bool          // logged in
	hinted     bool          // BUSY carried retry-after
	retryAfter time.Duration // the hint, when hinted
}

// parseAnswer parses one answer line (without its line end).
func parseAnswer(line string) (answer, error) {
	switch line {
	case "OK":
		return answer{ok: true}, nil
	case "BUSY":
		return answer{}, nil
	}
	v, found := strings.CutPrefix(line, "BUSY retry-after=")
	if !found {
		return answer{}, fmt.Errorf("%w: %.*q", errBadAnswer, maxAnswer, line)
	}
	s, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsNaN(s) || s < 0 || s > maxRetryAfter.Seconds() {
		return answer{}, fmt.Errorf("%w: retry-after %.*q (want 0 to %v seconds)", errBadAnswer, maxAnswer, v, maxRetryAfter.Seconds())
	}
	return answer{hinted: true, retryAfter: time.Duration(s * float64(time.Second))}, nil
}

// formatBusy is the server's refusal, with a hint when retryAfter ≥ 0.
func formatBusy(retryAfter time.Duration) string {
	if retryAfter < 0 {
		return "BUSY\n"
	}
	return "BUSY retry-after=" + strconv.FormatFloat(retryAfter.Seconds(), 'f', -1, 64) + "\n"
}

// readLine reads one non-blank line from r a byte at a time, so that
// nothing after it is consumed (the session reads on from the same
// connection). It strips "\r\n" or "\n".
func readLine(r io.Reader) (string, error) {
	var buf [maxAnswer + 1]byte // the line and its \r
	n := 0
	for {
		if _, err := io.ReadFull(r, buf[n:n+1]); err != nil {
			if errors.Is(err, io.EOF) && n > 0 {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		if buf[n] != '\n' {
			if n++; n == len(buf) {
				return "", fmt.Errorf("%w: longer than %d bytes", errBadAnswer, maxAnswer)
			}
			continue
		}
		line := strings.TrimSuffix(string(buf[:n]), "\r")
		if line != "" {
			return line, nil
		}
		n = 0 // a blank line: a probe's answer
	}
}
