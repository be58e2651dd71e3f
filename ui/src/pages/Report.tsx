// A job's report: the recommendation, original vs chosen side by side (chart and table), the
// candidates, and the full HTML report (cohort tables, curves, cost, lineage) embedded from
// GET /reports/{job}?format=html, with the PDF one click away.
import { useEffect, useState } from 'react';
import { Anchor, Badge, Button, Group, List, Stack, Table, Text, Title } from '@mantine/core';
import { Link, useParams } from 'react-router-dom';
import { fetchWithAuth } from '../api/client';
import { CompareChart, type Pair } from '../components/CompareChart';
import { AMBER, ErrorNote, RED, fmtBytes, fmtNum } from '../components/bits';

interface Row { id: string; technique: string; chosen: boolean; metric: number; drop_pct: number; p50_ms: number; size_bytes: number; ratio: number; speedup: number; missed: string[] }
interface Summary { title: string; recommendation: string; reason: string; flags: { kind: string; severity: string; message: string }[]; metric: string; baseline: Row; candidates: Row[] }
interface ReportDoc { job: string; state: string; reason?: string; summary?: Summary }

const VERDICT: Record<string, string> = { ship: 'Ship', ship_with_caveats: 'Ship with caveats', dont_ship: "Don't ship" };

function verdict(s: Summary): string {
  return `${VERDICT[s.recommendation] ?? s.recommendation}${s.reason ? `: ${s.reason}` : ''}`;
}

export function ReportPage() {
  const { id = '' } = useParams();
  const [doc, setDoc] = useState<ReportDoc | null>(null);
  const [html, setHtml] = useState('');
  const [err, setErr] = useState('');
  useEffect(() => {
    let url = '';
    fetchWithAuth(`/reports/${id}?format=json`, 'application/json')
      .then((r) => r.json())
      .then((d: ReportDoc) => setDoc(d), (e: Error) => setErr(e.message));
    fetchWithAuth(`/reports/${id}?format=html`, 'text/html')
      .then((r) => r.blob())
      .then((b) => { url = URL.createObjectURL(new Blob([b], { type: 'text/html' })); setHtml(url); }, (e: Error) => setErr((x) => x || e.message));
    return () => { if (url) URL.revokeObjectURL(url); };
  }, [id]);
  async function pdf() {
    try {
      const b = await (await fetchWithAuth(`/reports/${id}?format=pdf`, 'application/pdf')).blob();
      const url = URL.createObjectURL(b);
      const a = document.createElement('a');
      a.href = url;
      a.download = `${id}-report.pdf`;
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (e) {
      setErr((e as Error).message);
    }
  }
  const s = doc?.summary;
  const chosen = s?.candidates.find((c) => c.chosen);
  const pairs: Pair[] = s && chosen ? [
    { label: s.metric, original: s.baseline.metric, compressed: chosen.metric, unit: '' },
    { label: 'P50 latency', original: s.baseline.p50_ms, compressed: chosen.p50_ms, unit: 'ms' },
    { label: 'Size', original: s.baseline.size_bytes / 1024, compressed: chosen.size_bytes / 1024, unit: 'KB' },
  ] : [];
  return (
    <Stack>
      <Group justify="space-between">
        <Title order={2}>Report for job <Anchor component={Link} to={`/jobs/${id}`}>{id}</Anchor></Title>
        <Button variant="default" onClick={() => void pdf()}>Download PDF</Button>
      </Group>
      <ErrorNote error={err} />
      {s && (
        <>
          <Text fw={600} data-testid="recommendation">{verdict(s)}</Text>
          {s.flags.length > 0 && (
            <List aria-label="Flags">{s.flags.map((f, i) => <List.Item key={i}><Badge color={f.severity === 'block' ? RED : AMBER} variant="filled" mr="xs">{f.severity}</Badge>{f.kind}: {f.message}</List.Item>)}</List>
          )}
          {chosen && <CompareChart pairs={pairs} caption={`Original vs chosen candidate ${chosen.id}`} />}
          <Table.ScrollContainer minWidth={700}>
            <Table aria-label="Candidates" striped>
              <Table.Thead><Table.Tr><Table.Th scope="col">Candidate</Table.Th><Table.Th scope="col">{s.metric}</Table.Th><Table.Th scope="col">Drop %</Table.Th><Table.Th scope="col">P50 ms</Table.Th><Table.Th scope="col">Size</Table.Th><Table.Th scope="col">Ratio</Table.Th><Table.Th scope="col">Chosen</Table.Th></Table.Tr></Table.Thead>
              <Table.Tbody>
                {s.candidates.map((c) => (
                  <Table.Tr key={c.id}><Table.Td>{c.id}</Table.Td><Table.Td>{fmtNum(c.metric, 4)}</Table.Td><Table.Td>{fmtNum(c.drop_pct)}</Table.Td><Table.Td>{fmtNum(c.p50_ms, 3)}</Table.Td><Table.Td>{fmtBytes(c.size_bytes)}</Table.Td><Table.Td>{fmtNum(c.ratio)}×</Table.Td><Table.Td>{c.chosen ? 'yes' : ''}</Table.Td></Table.Tr>
                ))}
              </Table.Tbody>
            </Table>
          </Table.ScrollContainer>
        </>
      )}
      {doc && !s && <Text>This job has no rendered report{doc.reason ? `: ${doc.reason}` : ''}.</Text>}
      {html && (
        <section aria-labelledby="full-report">
          <Title order={3} size="h4" id="full-report" mb="xs">Full report (cohorts, curves, cost, lineage)</Title>
          <iframe className="tamp-report" src={html} title="Full compression report" sandbox="" data-testid="report-frame" />
        </section>
      )}
    </Stack>
  );
}
