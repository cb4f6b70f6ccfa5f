package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v4/ffjson"
	"github.com/peterbourgon/ff/v4/ffyaml"
)

// The flags that are not settings of server.Config.
const (
	configFlag  = "config"
	versionFlag = "version"
)

// errVersion is parseConfig's answer to --version.
var errVersion = errors.New("version requested")

// maxConfigFile bounds the size of --config.
const maxConfigFile = 1 << 20

// loadConfigFile applies the settings of the YAML or JSON file at path to
// fs, for the flags not in given (set on the command line or by an
// environment variable). Keys are flag names (grpc-addr; grpc_addr is
// accepted too), values strings, numbers or booleans; a list is a list of
// values for a flag (each is set in turn). The file is parsed by
// peterbourgon/ff's parsers: .json as JSON, .yaml and .yml as YAML, any
// other name as JSON when it starts with "{" and YAML otherwise. Its errors
// are *server.ConfigError that echo no secret value.
func loadConfigFile(fs *flag.FlagSet, path string, given map[string]bool) error {
	f, err := os.Open(path)
	if err != nil {
		return badConfig("--config: %v", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigFile+1))
	if err != nil {
		return badConfig("--config: %v", err)
	}
	if len(data) > maxConfigFile {
		return badConfig("--config %s: larger than %d bytes", path, maxConfigFile)
	}
	parse, format := ffyaml.Parse, "YAML"
	switch ext := strings.ToLower(filepath.Ext(path)); {
	case ext == ".json", ext != ".yaml" && ext != ".yml" && bytes.HasPrefix(bytes.TrimSpace(data), []byte("{")):
		parse, format = ffjson.Parse, "JSON"
	}
	var setErr error // a refusal of ours, kept apart from the parser's errors
	err = parse(bytes.NewReader(data), func(key, value string) error {
		name := strings.ReplaceAll(key, "_", "-")
		fl := fs.Lookup(name)
		switch {
		case fl == nil || name == configFlag || name == versionFlag:
			setErr = badConfig("--config %s: unknown setting %q (keys are flag names, such as grpc-addr)", path, key)
		case given[name]:
			return nil // the flag or its environment twin wins
		default:
			if err := fs.Set(name, value); err != nil {
				setErr = setValueErr(name, fmt.Sprintf("%s in --config %s", name, path), value, err)
			}
		}
		return setErr
	})
	if setErr != nil {
		return setErr
	}
	if err != nil {
		return badConfig("--config %s: not valid %s: %s", path, format, parseErr(err))
	}
	return nil
}

var yamlLine = regexp.MustCompile(`line \d+`)

// parseErr describes a YAML or JSON syntax error by its position only: the
// parsers quote pieces of the input, which may be a secret.
func parseErr(err error) string {
	if m := yamlLine.FindString(err.Error()); m != "" {
		return m
	}
	return jsonErr(err)
}

// jsonErr describes a JSON error without quoting the input.
func jsonErr(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "offset "); i >= 0 {
		return msg[i:]
	}
	if strings.Contains(msg, "unexpected end of JSON input") || errors.Is(err, io.ErrUnexpectedEOF) {
		return "unexpected end of input"
	}
	return "malformed"
}

// secondsValue is a time.Duration flag that also takes a plain number of
// seconds ("30" or "1.5"), as client-demo's flags do.
type secondsValue time.Duration

// durationVar defines a duration flag that also takes a number of seconds.
func durationVar(fs *flag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	fs.Var((*secondsValue)(p), name, usage)
}

func (d *secondsValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if v, err := time.ParseDuration(s); err == nil {
		*d = secondsValue(v)
		return nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f != f || f > float64(1<<63-1)/float64(time.Second) || f < -float64(1<<63-1)/float64(time.Second) {
		return errors.New("parse error")
	}
	*d = secondsValue(time.Duration(f * float64(time.Second)))
	return nil
}

func (d *secondsValue) String() string { return (*time.Duration)(d).String() }
func (d *secondsValue) Get() any       { return time.Duration(*d) }

// isBool reports whether f is a boolean flag (--name alone means true).
func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}
