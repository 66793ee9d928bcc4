package process

// HandoverCounts reports how many processes are live and how many exit
// retention records are kept (expired ones dropped first), for the live
// upgrade, which cannot carry them yet (handover.PendingProcesses).
func (m *Manager) HandoverCounts() (live, retained int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ret.expire(m.now())
	return len(m.live), len(m.ret.recs)
}
