package oci

import "fmt"

// MaxRepoNameLength is the longest repository name ValidateRepoName accepts.
// The distribution-spec only says clients commonly limit
// "<registry host>/<name>" to 255 characters; Strata bounds the name itself.
const MaxRepoNameLength = 255

// MaxTagLength is the longest tag the distribution-spec allows.
const MaxTagLength = 128

// Character classes, indexed by byte.
const (
	clsLowerAlnum = 1 << iota // [a-z0-9]
	clsTagFirst               // [a-zA-Z0-9_]
	clsTag                    // [a-zA-Z0-9._-]
)

var charClass = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		b := byte(c)
		lower := b >= 'a' && b <= 'z'
		upper := b >= 'A' && b <= 'Z'
		digit := b >= '0' && b <= '9'
		if lower || digit {
			t[c] |= clsLowerAlnum
		}
		if lower || upper || digit || b == '_' {
			t[c] |= clsTagFirst | clsTag
		}
		if b == '.' || b == '-' {
			t[c] |= clsTag
		}
	}
	return t
}()

// ValidateRepoName reports whether name is a valid repository name: it must
// match the distribution-spec grammar
//
//	[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
//
// in full and be at most MaxRepoNameLength (255) bytes long. So each
// "/"-separated component is lowercase alphanumeric runs joined by exactly
// one ".", one "_", exactly two "__", or any number of "-"; it cannot be
// empty, start or end with a separator, and "a//b", "a/", "-a", "A" and
// "a..b" are invalid.
//
// The check is hand-written (no regexp), does not allocate when name is
// valid, and returns an error wrapping ErrNameInvalid otherwise.
func ValidateRepoName(name string) error {
	if msg, at := checkRepoName(name); msg != "" {
		if at >= 0 {
			return fmt.Errorf("%w: %s: %s at offset %d", ErrNameInvalid, quote(name), msg, at)
		}
		return fmt.Errorf("%w: %s: %s", ErrNameInvalid, quote(name), msg)
	}
	return nil
}

// checkRepoName returns "" if name is valid, else a reason and the byte
// offset it applies to (-1 for the whole name).
func checkRepoName(name string) (string, int) {
	n := len(name)
	switch {
	case n == 0:
		return "name is empty", -1
	case n > MaxRepoNameLength:
		return fmt.Sprintf("name is %d bytes long, the limit is %d", n, MaxRepoNameLength), -1
	}
	i := 0
	for {
		// A run of [a-z0-9] must start the name, follow each "/" and follow
		// each separator.
		if charClass[name[i]]&clsLowerAlnum == 0 {
			return unexpected(name, i), i
		}
		for i < n && charClass[name[i]]&clsLowerAlnum != 0 {
			i++
		}
		if i == n {
			return "", 0
		}
		switch name[i] {
		case '/':
			i++
		case '.':
			i++
		case '_':
			i++
			if i < n && name[i] == '_' {
				i++
			}
		case '-':
			for i < n && name[i] == '-' {
				i++
			}
		default:
			return unexpected(name, i), i
		}
		if i == n {
			return "name must end with [a-z0-9]", -1
		}
	}
}

func unexpected(name string, i int) string {
	c := name[i]
	switch {
	case c >= 'A' && c <= 'Z':
		return "uppercase letters are not allowed"
	case c == '/' || c == '.' || c == '_' || c == '-':
		if i == 0 {
			return fmt.Sprintf("name must start with [a-z0-9], not %q", c)
		}
		return fmt.Sprintf("separator %q must be between [a-z0-9] characters (only \".\", \"_\", \"__\", \"-+\" and \"/\" separate them)", c)
	default:
		return fmt.Sprintf("character %q is not allowed", c)
	}
}

// ValidateTag reports whether tag is a valid tag: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127},
// i.e. 1 to 128 bytes, not starting with "." or "-". It does not allocate
// when tag is valid and returns an error wrapping ErrTagInvalid otherwise.
func ValidateTag(tag string) error {
	n := len(tag)
	switch {
	case n == 0:
		return fmt.Errorf("%w: tag is empty", ErrTagInvalid)
	case n > MaxTagLength:
		return fmt.Errorf("%w: %s: tag is %d bytes long, the limit is %d", ErrTagInvalid, quote(tag), n, MaxTagLength)
	case charClass[tag[0]]&clsTagFirst == 0:
		return fmt.Errorf("%w: %s: tag must start with [a-zA-Z0-9_]", ErrTagInvalid, quote(tag))
	}
	for i := 1; i < n; i++ {
		if charClass[tag[i]]&clsTag == 0 {
			return fmt.Errorf("%w: %s: character %q at offset %d is not allowed (only [a-zA-Z0-9._-])", ErrTagInvalid, quote(tag), tag[i], i)
		}
	}
	return nil
}
