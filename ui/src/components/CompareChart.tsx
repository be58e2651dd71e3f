// Side-by-side bars (original vs compressed) for one measure, with the numbers in a data
// table beside it, so a screen reader gets the same content as the picture.
import { Table } from '@mantine/core';

export interface Pair {
  label: string;
  original: number;
  compressed: number;
  unit: string;
}

export function CompareChart({ pairs, caption }: { pairs: Pair[]; caption: string }) {
  const w = 360;
  const rowH = 56;
  return (
    <figure style={{ margin: 0 }}>
      <svg className="tamp-chart" width={w} height={pairs.length * rowH + 10} role="img" aria-labelledby="chart-cap" focusable="false">
        {pairs.map((p, i) => {
          const max = Math.max(p.original, p.compressed, 1e-12);
          const y = i * rowH + 4;
          return (
            <g key={p.label}>
              <text x={0} y={y + 10}>{p.label}</text>
              <rect x={0} y={y + 16} width={(w - 120) * (p.original / max)} height={14} fill="var(--mantine-color-gray-7)" />
              <text x={(w - 120) * (p.original / max) + 6} y={y + 28}>{p.original.toPrecision(4)} {p.unit}</text>
              <rect x={0} y={y + 34} width={(w - 120) * (p.compressed / max)} height={14} fill="var(--mantine-color-blue-8)" />
              <text x={(w - 120) * (p.compressed / max) + 6} y={y + 46}>{p.compressed.toPrecision(4)} {p.unit}</text>
            </g>
          );
        })}
      </svg>
      <figcaption id="chart-cap">{caption} (grey: original, blue: compressed)</figcaption>
      <Table aria-label={`${caption}: data`} mt="xs">
        <Table.Thead><Table.Tr><Table.Th scope="col">Measure</Table.Th><Table.Th scope="col">Original</Table.Th><Table.Th scope="col">Compressed</Table.Th></Table.Tr></Table.Thead>
        <Table.Tbody>
          {pairs.map((p) => (
            <Table.Tr key={p.label}><Table.Th scope="row">{p.label}</Table.Th><Table.Td>{p.original.toPrecision(4)} {p.unit}</Table.Td><Table.Td>{p.compressed.toPrecision(4)} {p.unit}</Table.Td></Table.Tr>
          ))}
        </Table.Tbody>
      </Table>
    </figure>
  );
}
