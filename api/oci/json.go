package oci

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// This file holds a small strict JSON reader for manifests. encoding/json is
// unsuitable here: its struct decoding matches keys case-insensitively and
// lets a duplicated key silently win, so the registry and a client could
// read different references from the same bytes; and its token API
// allocates for every token. The reader validates RFC 8259 syntax (the
// caller checks UTF-8 once for the whole body), walks objects member by
// member with exact keys, and hands values back as sub-slices of the input,
// so it allocates only for the strings the caller keeps.

// fieldError is a manifest problem at a JSON path such as "layers[2].digest".
type fieldError struct {
	path string
	msg  string
}

func (e *fieldError) Error() string {
	if e.path == "" {
		return e.msg
	}
	return e.path + ": " + e.msg
}

func fieldErrorf(path, msg string) error { return &fieldError{path: path, msg: msg} }

// within prefixes the path of a *fieldError with p (a key or "[i]").
func within(err error, p string) error {
	if err == nil {
		return nil
	}
	var fe *fieldError
	if !errors.As(err, &fe) {
		return err
	}
	// Deeply nested values would make the path (and the error message)
	// huge, and building it quadratic: keep only the innermost part.
	const maxPath = 200
	switch {
	case len(fe.path) > maxPath && strings.HasPrefix(fe.path, "..."):
	case len(fe.path) > maxPath:
		fe.path = "..." + fe.path
	case fe.path == "":
		fe.path = p
	case fe.path[0] == '[':
		fe.path = p + fe.path
	default:
		fe.path = p + "." + fe.path
	}
	return fe
}

// maxJSONDepth bounds nesting (as encoding/json does) so a body of
// brackets cannot exhaust the stack.
const maxJSONDepth = 10000

// jsonReader reads JSON from b, starting at i.
type jsonReader struct {
	b     []byte
	i     int
	depth int
}

func (r *jsonReader) syntax(msg string) error {
	return fieldErrorf("", fmt.Sprintf("malformed JSON at byte %d: %s", r.i, msg))
}

func (r *jsonReader) skipWS() {
	for r.i < len(r.b) {
		switch r.b[r.i] {
		case ' ', '\t', '\n', '\r':
			r.i++
		default:
			return
		}
	}
}

// peek skips whitespace and returns the next byte, or 0 at the end.
func (r *jsonReader) peek() byte {
	r.skipWS()
	if r.i >= len(r.b) {
		return 0
	}
	return r.b[r.i]
}

// value consumes and validates the next value and returns its bytes.
func (r *jsonReader) value() ([]byte, error) {
	c := r.peek()
	start := r.i
	var err error
	switch {
	case c == '{':
		_, err = r.object(func([]byte) error { _, err := r.value(); return err })
	case c == '[':
		_, err = r.array(func(int) error { _, err := r.value(); return err })
	case c == '"':
		_, _, err = r.str()
	case c == '-' || c >= '0' && c <= '9':
		err = r.number()
	case c == 't':
		err = r.literal("true")
	case c == 'f':
		err = r.literal("false")
	case c == 'n':
		err = r.literal("null")
	case c == 0 && r.i >= len(r.b):
		err = r.syntax("unexpected end of input")
	default:
		err = r.syntax(fmt.Sprintf("unexpected character %q", c))
	}
	if err != nil {
		return nil, err
	}
	return r.b[start:r.i], nil
}

// open consumes null (null == true), or the opening delimiter want. Any
// other value is a type error, reported as "must be <what>".
func (r *jsonReader) open(want byte, what string) (null bool, err error) {
	switch c := r.peek(); c {
	case 'n':
		return true, r.literal("null")
	case want:
		if r.depth++; r.depth > maxJSONDepth {
			return false, r.syntax("nesting too deep")
		}
		r.i++
		return false, nil
	case 0:
		if r.i >= len(r.b) {
			return false, r.syntax("unexpected end of input")
		}
	}
	if _, err := r.value(); err != nil {
		return false, err
	}
	return false, fieldErrorf("", "must be "+what)
}

// object reads an object (or null, reported as null == true), calling fn
// with each member's key (unescaped; valid only during the call); fn must
// consume exactly the member's value.
func (r *jsonReader) object(fn func(key []byte) error) (null bool, err error) {
	if null, err := r.open('{', "a JSON object"); null || err != nil {
		return null, err
	}
	if r.peek() == '}' {
		r.i++
		r.depth--
		return false, nil
	}
	for {
		if r.peek() != '"' {
			return false, r.syntax("expected a string key")
		}
		key, esc, err := r.str()
		if err != nil {
			return false, err
		}
		if esc {
			if key, err = unescape(key); err != nil {
				return false, err
			}
		}
		if r.peek() != ':' {
			return false, r.syntax(`expected ":"`)
		}
		r.i++
		if err := fn(key); err != nil {
			return false, err
		}
		switch r.peek() {
		case ',':
			r.i++
		case '}':
			r.i++
			r.depth--
			return false, nil
		default:
			return false, r.syntax(`expected "," or "}"`)
		}
	}
}

// array reads an array (or null), calling fn with each element's index; fn
// must consume exactly the element. Errors from fn get "[i]" prefixed.
func (r *jsonReader) array(fn func(i int) error) (null bool, err error) {
	if null, err := r.open('[', "a JSON array"); null || err != nil {
		return null, err
	}
	if r.peek() == ']' {
		r.i++
		r.depth--
		return false, nil
	}
	for i := 0; ; i++ {
		if err := fn(i); err != nil {
			return false, within(err, "["+strconv.Itoa(i)+"]")
		}
		switch r.peek() {
		case ',':
			r.i++
		case ']':
			r.i++
			r.depth--
			return false, nil
		default:
			return false, r.syntax(`expected "," or "]"`)
		}
	}
}

// str consumes a string at r.i (which is '"') and returns its raw content
// between the quotes and whether it contains escapes.
func (r *jsonReader) str() (content []byte, escaped bool, err error) {
	start := r.i + 1
	for i := start; i < len(r.b); i++ {
		switch c := r.b[i]; {
		case c == '"':
			r.i = i + 1
			return r.b[start:i], escaped, nil
		case c == '\\':
			escaped = true
			i++
			if i >= len(r.b) {
				break
			}
			switch r.b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(r.b) || !isHex4(r.b[i+1:i+5]) {
					r.i = i
					return nil, false, r.syntax(`bad \u escape`)
				}
				i += 4
			default:
				r.i = i
				return nil, false, r.syntax(fmt.Sprintf("bad escape \\%c", r.b[i]))
			}
		case c < 0x20:
			r.i = i
			return nil, false, r.syntax("control character in string")
		}
	}
	r.i = len(r.b)
	return nil, false, r.syntax("unterminated string")
}

func isHex4(b []byte) bool {
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// unescape decodes the content of a string with escapes, exactly as
// encoding/json does (invalid surrogates become U+FFFD).
func unescape(content []byte) ([]byte, error) {
	quoted := make([]byte, 0, len(content)+2)
	quoted = append(append(append(quoted, '"'), content...), '"')
	var s string
	if err := json.Unmarshal(quoted, &s); err != nil {
		return nil, fieldErrorf("", "malformed JSON string")
	}
	return []byte(s), nil
}

// number consumes -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (r *jsonReader) number() error {
	b, i := r.b, r.i
	digits := func() bool {
		s := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i > s
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case !digits():
		r.i = i
		return r.syntax("bad number")
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			r.i = i
			return r.syntax("bad number")
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			r.i = i
			return r.syntax("bad number")
		}
	}
	r.i = i
	return nil
}

func (r *jsonReader) literal(lit string) error {
	if !bytes.HasPrefix(r.b[r.i:], []byte(lit)) {
		return r.syntax("invalid literal")
	}
	r.i += len(lit)
	return nil
}

func isNull(raw []byte) bool { return len(raw) == 0 || string(raw) == "null" }

// jsonString decodes raw (one complete, valid JSON value) as a string. null
// (or absent: raw == nil) yields "", false, nil.
func jsonString(raw []byte) (s string, present bool, err error) {
	if isNull(raw) {
		return "", false, nil
	}
	if raw[0] != '"' {
		return "", true, fieldErrorf("", "must be a string")
	}
	content := raw[1 : len(raw)-1]
	if bytes.IndexByte(content, '\\') >= 0 {
		if content, err = unescape(content); err != nil {
			return "", true, err
		}
	}
	return string(content), true, nil
}

// jsonInt decodes raw as an integer that fits in int64. JSON numbers with a
// fraction or exponent ("2.0", "2e0") are rejected. null or absent yields
// 0, false, nil.
func jsonInt(raw []byte) (v int64, present bool, err error) {
	if isNull(raw) {
		return 0, false, nil
	}
	digits := raw
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 {
		return 0, true, fieldErrorf("", "must be an integer")
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, true, fieldErrorf("", "must be an integer")
		}
	}
	v, err = strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		return 0, true, fieldErrorf("", "integer out of range")
	}
	return v, true, nil
}

// foldMatch returns the name in names that key equals under Unicode case
// folding without being identical to it, or "". encoding/json matches
// struct fields that way, so many clients would read such a key as the
// field while Strata ignores it.
func foldMatch(key []byte, names []string) string {
	for _, n := range names {
		if string(key) != n && bytes.EqualFold(key, []byte(n)) {
			return n
		}
	}
	return ""
}
