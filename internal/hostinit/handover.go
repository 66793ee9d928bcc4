package hostinit

import (
	"context"
	"maps"
	"slices"

	"github.com/envd/envd/internal/defaults"
	"github.com/envd/envd/internal/handover"
	"github.com/envd/envd/internal/handover/handoverpb"
)

// HandoverPart is /init's share of a live upgrade (control-plane.md §8.7
// "/init state" and "NFS ledger"): the token, the default user and
// workdir, the user and internal variables, the stale-request guard's
// newest timestamp, the CA bundle installed last, the hyperloop address
// and the NFS ledger. The upgrade holds the init, CA-install and hyperloop
// locks while it exports, so none of them changes meanwhile (the MMDS
// poller, which sets the sandbox and template ids, is paused by its own
// part). It is a handover.Part and a handover.Importer.
type HandoverPart struct {
	In *Initializer
}

var (
	_ handover.Part     = HandoverPart{}
	_ handover.Importer = HandoverPart{}
)

// Name implements handover.Part.
func (p HandoverPart) Name() string { return "init state" }

// Quiesce has nothing to stop: the upgrade holds /init's locks.
func (p HandoverPart) Quiesce(context.Context) error { return nil }

// Resume implements handover.Part.
func (p HandoverPart) Resume() {}

// Export writes the /init state and the NFS ledger.
func (p HandoverPart) Export(rec *handoverpb.Record, _ *handover.Carried) error {
	d := p.In.d
	st := &handoverpb.InitState{
		AccessToken:    d.Token.Bytes(),
		DefaultUser:    d.Env.DefaultUser(),
		DefaultWorkdir: d.Env.DefaultWorkdir(),
		UserEnvVars:    d.Env.UserVars(),
	}
	internal := func(name string) *string {
		if v, ok := d.Env.Internal(name); ok {
			return &v
		}
		return nil
	}
	st.SandboxId = internal(defaults.SandboxIDVar)
	st.TemplateId = internal(defaults.TemplateIDVar)
	st.EventsAddress = internal(defaults.EventsAddressVar)
	p.In.mu.Lock()
	st.NewestTimestampNs = p.In.newest
	p.In.mu.Unlock()
	if d.CA != nil {
		st.CaBundle = d.CA.Last()
	}
	if d.Hyperloop != nil {
		st.HyperloopAddress = d.Hyperloop.Address()
	}
	rec.Init = st
	if d.Volumes != nil {
		ledger := d.Volumes.Ledger()
		for _, path := range slices.Sorted(maps.Keys(ledger)) {
			rec.NfsVolumes = append(rec.NfsVolumes, &handoverpb.NfsVolume{Path: path, LifecycleId: ledger[path]})
		}
	}
	return nil
}

// Import restores the /init state (§8.11 step 9). The hyperloop address is
// applied again in the background (nothing changes when /etc/hosts already
// maps it), which also re-sets WRENN_EVENTS_ADDRESS.
func (p HandoverPart) Import(rec *handoverpb.Record, _ *handover.Inherited) (handover.Counts, error) {
	d := p.In.d
	st := rec.GetInit()
	if st == nil {
		return handover.Counts{}, nil
	}
	if tok := st.GetAccessToken(); len(tok) > 0 {
		d.Token.Set(tok)
		wipeBytes(tok)
	}
	d.Env.SetDefaultUser(st.GetDefaultUser())
	d.Env.SetDefaultWorkdir(st.GetDefaultWorkdir())
	d.Env.ReplaceUserVars(st.GetUserEnvVars())
	for name, v := range map[string]*string{
		defaults.SandboxIDVar:     st.SandboxId,
		defaults.TemplateIDVar:    st.TemplateId,
		defaults.EventsAddressVar: st.EventsAddress,
	} {
		if v != nil {
			d.Env.SetInternal(name, *v)
		}
	}
	p.In.mu.Lock()
	p.In.newest = st.GetNewestTimestampNs()
	p.In.mu.Unlock()
	if d.CA != nil {
		d.CA.setLast(st.GetCaBundle())
	}
	if d.Hyperloop != nil && st.GetHyperloopAddress() != "" {
		d.Hyperloop.Set(st.GetHyperloopAddress())
	}
	if d.Volumes != nil {
		ledger := make(map[string]string, len(rec.GetNfsVolumes()))
		for _, v := range rec.GetNfsVolumes() {
			ledger[v.GetPath()] = v.GetLifecycleId()
		}
		d.Volumes.RestoreLedger(ledger)
	}
	return handover.Counts{}, nil
}

func wipeBytes(b []byte) {
	for i := range b {
		b[i] = 0
	}
}
