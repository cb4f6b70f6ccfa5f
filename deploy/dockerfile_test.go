package deploy

import (
	"bufio"
	"debug/elf"
	"go/version"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, ...
	args string
}

type stage struct {
	name, base string
	instrs     []instruction
}

type dockerfile struct {
	globalArgs map[string]string // ARGs before the first FROM, with defaults
	stages     []stage
}

func (d *dockerfile) stage(name string) *stage {
	for i := range d.stages {
		if d.stages[i].name == name {
			return &d.stages[i]
		}
	}
	return nil
}

// parseDockerfile reads the instructions of a Dockerfile: comments and
// blank lines dropped, lines ending in a backslash joined.
func parseDockerfile(t *testing.T, file string) *dockerfile {
	t.Helper()
	fh, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	d := &dockerfile{globalArgs: map[string]string{}}
	var pending strings.Builder
	sc := bufio.NewScanner(fh)
	from := regexp.MustCompile(`(?i)^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$`)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			pending.WriteString(cont + " ")
			continue
		}
		pending.WriteString(line)
		full := pending.String()
		pending.Reset()
		cmd, args, _ := strings.Cut(full, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		switch {
		case in.cmd == "FROM":
			m := from.FindStringSubmatch(in.args)
			if m == nil {
				t.Fatalf("%s: cannot read FROM %s", file, in.args)
			}
			d.stages = append(d.stages, stage{name: m[2], base: m[1]})
		case len(d.stages) == 0 && in.cmd == "ARG":
			k, v, _ := strings.Cut(in.args, "=")
			d.globalArgs[k] = v
		case len(d.stages) == 0:
			t.Fatalf("%s: %s before the first FROM", file, in.cmd)
		default:
			s := &d.stages[len(d.stages)-1]
			s.instrs = append(s.instrs, in)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *dockerfile) expand(s string) string {
	return os.Expand(s, func(k string) string { return d.globalArgs[k] })
}

// TestDockerfile checks the image definition: the targets compose.yaml and
// `make image` build, a static -trimpath build with the version stamped, a
// builder whose Go is at least the one go.mod asks for, and final stages on
// distroless static as a numeric non-root user.
func TestDockerfile(t *testing.T) {
	t.Parallel()
	d := parseDockerfile(t, "Dockerfile")
	build := d.stage("build")
	if build == nil {
		t.Fatal("no build stage")
	}
	var runs []string
	env := ""
	for _, in := range build.instrs {
		switch in.cmd {
		case "RUN":
			runs = append(runs, in.args)
		case "ENV":
			env += " " + in.args
		}
	}
	all := strings.Join(runs, "\n")
	for _, want := range []string{"go build", "-trimpath", "-ldflags", "-X main.version=${VERSION}"} {
		if !strings.Contains(all, want) {
			t.Errorf("the build stage does not run %q", want)
		}
	}
	loop := regexp.MustCompile(`for cmd in ([^;]*);`).FindStringSubmatch(all)
	for _, name := range []string{"broker", "client-demo"} {
		inLoop := loop != nil && strings.Contains(all, "./cmd/$cmd") && strings.Contains(" "+loop[1]+" ", " "+name+" ")
		if !inLoop && !strings.Contains(all, "./cmd/"+name) {
			t.Errorf("the build stage does not build ./cmd/%s", name)
		}
	}
	if !strings.Contains(env, "CGO_ENABLED=0") {
		t.Error("the build stage does not set CGO_ENABLED=0")
	}

	// The builder's Go is at least the main module's go line.
	base := d.expand(build.base)
	m := regexp.MustCompile(`golang:(\d+\.\d+(?:\.\d+)?)`).FindStringSubmatch(base)
	if m == nil {
		t.Fatalf("build stage base %q is not a versioned golang image", base)
	}
	goMod := readFile(t, filepath.Join(repoRoot(t), "go.mod"))
	want := regexp.MustCompile(`(?m)^go (\S+)$`).FindStringSubmatch(goMod)
	if want == nil {
		t.Fatal("the main go.mod has no go line")
	}
	if version.Compare("go"+m[1], "go"+want[1]) < 0 {
		t.Errorf("the builder has Go %s, the main module needs %s", m[1], want[1])
	}

	for _, name := range []string{"broker", "client-demo"} {
		s := d.stage(name)
		if s == nil {
			t.Errorf("no %s target", name)
			continue
		}
		if s.base != "gcr.io/distroless/static-debian12:nonroot" && s.base != "scratch" {
			t.Errorf("%s: base %s, want distroless static (or scratch with CA certificates)", name, s.base)
		}
		var user, entrypoint string
		copied := false
		for _, in := range s.instrs {
			switch in.cmd {
			case "USER":
				user = in.args
			case "ENTRYPOINT":
				entrypoint = in.args
			case "COPY":
				copied = copied || strings.Contains(in.args, "--from=build /out/"+name+" ")
			case "RUN":
				t.Errorf("%s: RUN in a final stage (distroless has no shell)", name)
			}
		}
		uid, _, _ := strings.Cut(user, ":")
		if n, err := strconv.Atoi(uid); err != nil || n == 0 {
			t.Errorf("%s: USER %q, want a numeric non-root user (runAsNonRoot can only verify a number)", name, user)
		}
		if !copied || !strings.Contains(entrypoint, "/"+name+`"`) {
			t.Errorf("%s: want the %s binary copied from the build stage as the entrypoint (ENTRYPOINT %s)", name, name, entrypoint)
		}
	}
	if last := d.stages[len(d.stages)-1].name; last != "broker" {
		t.Errorf("the last (default) stage is %q, want broker", last)
	}
}

// TestStaticBinary checks that the broker the checks built, with the
// image's flags (CGO_ENABLED=0, -trimpath), is a static executable.
func TestStaticBinary(t *testing.T) {
	t.Parallel()
	getFacts(t)
	for _, name := range []string{"broker", "client-demo"} {
		f, err := elf.Open(filepath.Join(binDir, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s has a dynamic loader: not static", name)
			}
		}
		if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
			t.Errorf("%s needs %v: not static", name, libs)
		}
		f.Close()
	}
}
