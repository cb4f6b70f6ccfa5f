package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
)

// KeyPrefix starts every key GenerateKey makes, so that a leaked key is easy
// to recognise (secret scanners, log audits).
const KeyPrefix = "tbk_"

// keyBytes is the entropy of a generated key: 256 bits.
const keyBytes = 32

// maxKeyLen bounds a presented key. Longer keys are refused without hashing;
// generated keys are len(KeyPrefix)+43 bytes.
const maxKeyLen = 256

// GenerateKey returns a new client key and its hash, the value to put in the
// client registry as key_sha256. Hand the key to the client once; the broker
// keeps only the hash.
func GenerateKey() (key, hash string, err error) {
	var b [keyBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", fmt.Errorf("auth: generating a key: %w", err)
	}
	key = KeyPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	return key, HashKey(key), nil
}

// HashKey returns the hex SHA-256 of key, as stored in the client registry.
//
// A plain, unsalted, fast hash is the right tool here, unlike for passwords:
// client keys are 256-bit random values, so there is no dictionary to try
// and a brute-force search of the key space is out of reach however fast the
// hash is. Salting and stretching (bcrypt, argon2) defend low-entropy secrets
// and would only make every authenticated call slower. What the hash buys is
// that the registry (a config file, an environment variable) never holds a
// usable key.
func HashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// hashKey returns the SHA-256 of key without allocating, and false when key
// is empty or longer than maxKeyLen.
func hashKey(key string) ([sha256.Size]byte, bool) {
	if key == "" || len(key) > maxKeyLen {
		return [sha256.Size]byte{}, false
	}
	var buf [maxKeyLen]byte
	n := copy(buf[:], key)
	return sha256.Sum256(buf[:n]), true
}
