package oci

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ParseRange parses the Range request header of a blob GET (RFC 9110,
// section 14) for a blob of size bytes, which the distribution-spec says a
// registry SHOULD support.
//
// An empty header returns ok == false and no error: serve the whole blob.
// Otherwise the header must be a single byte range:
//
//	bytes=a-b   bytes a..b inclusive; b is clamped to size-1
//	bytes=a-    bytes a..size-1
//	bytes=-n    the last n bytes (the whole blob if n >= size)
//
// and on success ok is true and 0 <= start <= end <= size-1: answer 206 with
// "Content-Range: bytes <start>-<end>/<size>" and end-start+1 bytes. The unit
// is matched case-insensitively; optional whitespace and empty elements
// around the single range are tolerated, as the RFC's list syntax allows.
// Numbers of any length are accepted (a huge last-pos is just clamped).
//
// Errors:
//   - ErrRangeInvalid: not bytes=..., garbage, a last-pos below the
//     first-pos ("bytes=5-3"), or more than one range ("bytes=0-1,5-6").
//     Strata does not serve multipart/byteranges. RFC 9110 lets a server
//     ignore a Range header it cannot or will not honour, so the caller
//     should serve the whole blob with 200 (the OCI conformance tests accept
//     that too).
//   - ErrRangeNotSatisfiable: the range is well formed but selects nothing:
//     first-pos >= size, a suffix length of 0 ("bytes=-0"), or any range of
//     an empty blob (size <= 0). The caller should answer 416 with
//     "Content-Range: bytes */<size>".
//
// ParseRange does not allocate unless it returns an error.
func ParseRange(header string, size int64) (start, end int64, ok bool, err error) {
	if header == "" {
		return 0, 0, false, nil
	}
	unit, set, found := strings.Cut(header, "=")
	if !found {
		return 0, 0, false, fmt.Errorf("%w: %s: expected bytes=<range>", ErrRangeInvalid, quote(header))
	}
	if !strings.EqualFold(unit, "bytes") {
		return 0, 0, false, fmt.Errorf("%w: %s: unsupported range unit %s", ErrRangeInvalid, quote(header), quote(unit))
	}
	spec, reason := singleRange(set)
	if reason != "" {
		return 0, 0, false, fmt.Errorf("%w: %s: %s", ErrRangeInvalid, quote(header), reason)
	}
	first, last, hasDash := strings.Cut(spec, "-")
	if !hasDash || !isDigits(last) && last != "" || !isDigits(first) && first != "" || first == "" && last == "" {
		return 0, 0, false, fmt.Errorf("%w: %s: expected <first>-[<last>] or -<suffix-length>", ErrRangeInvalid, quote(header))
	}
	if first == "" {
		// Suffix range: the last n bytes.
		n := parseSaturating(last)
		if n == 0 {
			return 0, 0, false, fmt.Errorf("%w: %s: suffix length 0 selects nothing", ErrRangeNotSatisfiable, quote(header))
		}
		if size <= 0 {
			return 0, 0, false, fmt.Errorf("%w: %s: blob is empty", ErrRangeNotSatisfiable, quote(header))
		}
		if n >= size {
			return 0, size - 1, true, nil
		}
		return size - n, size - 1, true, nil
	}
	if last != "" && compareDecimal(last, first) < 0 {
		return 0, 0, false, fmt.Errorf("%w: %s: last byte position is before the first", ErrRangeInvalid, quote(header))
	}
	start = parseSaturating(first)
	if size <= 0 || start >= size {
		return 0, 0, false, fmt.Errorf("%w: %s: first byte position is not below the blob size %d", ErrRangeNotSatisfiable, quote(header), max(size, 0))
	}
	end = size - 1
	if last != "" {
		end = min(parseSaturating(last), size-1)
	}
	return start, end, true, nil
}

// singleRange returns the one non-empty element of a range-set
// (1#range-spec: elements separated by OWS "," OWS, empty elements ignored),
// trimmed of optional whitespace, or a reason why there is not exactly one.
func singleRange(set string) (string, string) {
	var spec string
	n := 0
	for {
		elem, rest, more := strings.Cut(set, ",")
		if elem = trimOWS(elem); elem != "" {
			n++
			spec = elem
		}
		if !more {
			break
		}
		set = rest
	}
	switch n {
	case 0:
		return "", "no range given"
	case 1:
		return spec, ""
	default:
		return "", "multiple ranges are not supported"
	}
}

// ParseContentRange parses the Content-Range header of a blob upload PATCH
// (or of the closing PUT carrying the last chunk). start and end are
// inclusive byte offsets within the whole blob, with 0 <= start <= end.
//
// The distribution-spec form is "<start>-<end>" (^[0-9]+-[0-9]+$). For
// clients that send HTTP-style headers it also accepts "bytes <start>-<end>/*",
// "bytes <start>-<end>/<total>" (total must exceed end) and
// "bytes=<start>-<end>"; the unit is case-insensitive and surrounding
// whitespace is ignored. The caller still checks that start equals the
// current upload size and that end-start+1 equals the body length (416 if
// not, per the spec).
//
// An empty header, a missing or negative number, end < start, or a number
// that overflows int64 returns an error wrapping ErrContentRangeInvalid. A
// PATCH without Content-Range is a streamed chunk; that is for the caller to
// decide before calling ParseContentRange.
//
// ParseContentRange does not allocate unless it returns an error.
func ParseContentRange(header string) (start, end int64, err error) {
	s := trimOWS(header)
	total, hasTotal := "", false
	switch {
	case len(s) > 6 && strings.EqualFold(s[:6], "bytes="):
		s = s[6:]
	case len(s) > 6 && strings.EqualFold(s[:6], "bytes "):
		s, total, hasTotal = strings.Cut(strings.TrimLeft(s[6:], " "), "/")
		if !hasTotal {
			return 0, 0, fmt.Errorf("%w: %s: expected bytes <start>-<end>/<total or *>", ErrContentRangeInvalid, quote(header))
		}
	}
	first, last, ok := strings.Cut(s, "-")
	if !ok || !isDigits(first) || !isDigits(last) {
		return 0, 0, fmt.Errorf("%w: %s: expected <start>-<end>", ErrContentRangeInvalid, quote(header))
	}
	start, ok1 := parseInt63(first)
	end, ok2 := parseInt63(last)
	if !ok1 || !ok2 {
		return 0, 0, fmt.Errorf("%w: %s: offset out of range", ErrContentRangeInvalid, quote(header))
	}
	if end < start {
		return 0, 0, fmt.Errorf("%w: %s: end is before start", ErrContentRangeInvalid, quote(header))
	}
	if hasTotal && total != "*" {
		if !isDigits(total) {
			return 0, 0, fmt.Errorf("%w: %s: bad total length", ErrContentRangeInvalid, quote(header))
		}
		t, ok := parseInt63(total)
		if !ok {
			return 0, 0, fmt.Errorf("%w: %s: bad total length", ErrContentRangeInvalid, quote(header))
		}
		if t <= end {
			return 0, 0, fmt.Errorf("%w: %s: end is not below the total length", ErrContentRangeInvalid, quote(header))
		}
	}
	return start, end, nil
}

// FormatRange formats the inclusive byte range start-end as "<start>-<end>",
// the form of the Range header the distribution-spec requires on blob upload
// responses (POST 202, PATCH 202, GET 204): call FormatRange(0, size-1),
// where size is the number of bytes received so far.
//
// An upload with no bytes has no last byte, and the spec's "0-<end-of-range>"
// cannot express that ("0--1" does not match ^[0-9]+-[0-9]+$ and is rejected
// by clients that parse "%d-%d" and check end >= start). So when end < start
// FormatRange returns "<start>-<start>", that is "0-0" for an empty upload:
// the same as the reference implementation (distribution/distribution),
// which the OCI conformance tests accept (they only check the value once a
// byte has been uploaded). The cost is that "0-0" also means "1 byte
// received"; a client that resumes at offset 1 after an empty upload gets
// 416 from the offset check and can recover with GET. Negative start is
// treated as 0.
func FormatRange(start, end int64) string {
	start = max(start, 0)
	end = max(end, start)
	var buf [41]byte
	b := strconv.AppendInt(buf[:0], start, 10)
	b = append(b, '-')
	b = strconv.AppendInt(b, end, 10)
	return string(b)
}

// trimOWS trims HTTP optional whitespace (SP, HTAB).
func trimOWS(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// isDigits reports whether s is a non-empty run of ASCII digits.
func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// parseInt63 parses a run of ASCII digits (see isDigits) as a non-negative
// int64; ok is false on overflow.
func parseInt63(s string) (int64, bool) {
	var v int64
	for i := 0; i < len(s); i++ {
		d := int64(s[i] - '0')
		if v > (math.MaxInt64-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

// parseSaturating parses a run of ASCII digits, returning math.MaxInt64 on
// overflow (larger than any blob, so the result stays correct for ranges).
func parseSaturating(s string) int64 {
	v, ok := parseInt63(s)
	if !ok {
		return math.MaxInt64
	}
	return v
}

// compareDecimal compares two runs of ASCII digits numerically, at any
// length.
func compareDecimal(a, b string) int {
	a = strings.TrimLeft(a, "0")
	b = strings.TrimLeft(b, "0")
	if len(a) != len(b) {
		if len(a) < len(b) {
			return -1
		}
		return 1
	}
	return strings.Compare(a, b)
}
