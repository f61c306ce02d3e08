/* The part of one batch's forward and backward pass that lies between the two large matrix
 * products, for one floating type. Included by _kernels.c once per type, with
 *   REAL       float or double
 *   EXP        exp_float or exp_double
 *   TAIL       the function's name
 *
 * In, for a batch of B inputs, H hidden units and O classes:
 *   a1      (B, H)      x W1, without b1
 *   b1      (H,)
 *   W2b2    (H + 1, O)  W2 with b2 as its last row
 *   labels  (B,)        the true classes, each in [0, O)
 *   scale               the gradient's factor (the learning rate when training)
 * Out:
 *   p       (B,)        the probability each input gives its true class
 *   dz1T    (H, B)      dL/da1 times scale, transposed: x^T dz1T^T is W1's gradient
 *   g_b1    (H,)        b1's gradient times scale
 *   g_W2b2  (H + 1, O)  W2's and b2's gradients times scale
 *   work    (H + O + 2) * B scratch values
 * L is the batch's mean cross-entropy, -mean(log(p + 1e-7)).
 *
 * The hidden and output activations are kept transposed (one row per unit, one column per
 * input) so that every inner loop runs along memory over the batch, where it vectorizes.
 * Every sum has a fixed order (sum_of, dot_of), so the bits do not depend on the vector
 * width the compiler chose.
 */

static inline REAL CONCAT(sum_of_, REAL)(int n, const REAL *restrict x)
{
    REAL lane[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++)
            lane[l] += x[i + l];
    REAL sum = 0;
    for (; i < n; i++)
        sum += x[i];
    for (int l = 0; l < LANES; l++)
        sum += lane[l];
    return sum;
}

static inline REAL CONCAT(dot_of_, REAL)(int n, const REAL *restrict x, const REAL *restrict y)
{
    REAL lane[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++)
            lane[l] += x[i + l] * y[i + l];
    REAL sum = 0;
    for (; i < n; i++)
        sum += x[i] * y[i];
    for (int l = 0; l < LANES; l++)
        sum += lane[l];
    return sum;
}

/* y += w x, n values */
static inline void CONCAT(add_scaled_, REAL)(int n, REAL w, const REAL *restrict x, REAL *restrict y)
{
    for (int i = 0; i < n; i++)
        y[i] += w * x[i];
}

VECTOR_CLONES
static void TAIL(int B, int H, int O, const REAL *restrict a1, const REAL *restrict b1,
                 const REAL *restrict W2b2, const int64_t *restrict labels, REAL scale, REAL *restrict p,
                 REAL *restrict dz1T, REAL *restrict g_b1, REAL *restrict g_W2b2, REAL *restrict work)
{
    REAL *restrict z1T = work;            /* (H, B) */
    REAL *restrict yT = z1T + H * B;      /* (O, B): a2, then y, then dL/da2 */
    REAL *restrict column = yT + O * B;   /* (B,): per input, the max of a2, then the sum of exp */
    REAL *restrict factor = column + B;   /* (B,) */
    const REAL *restrict b2 = W2b2 + H * O;

    /* forward: z1 = sigmoid(x W1 + b1), transposed */
    for (int i = 0; i < B; i++)
        for (int h = 0; h < H; h++)
            z1T[h * B + i] = a1[i * H + h];
    for (int h = 0; h < H; h++) {
        REAL *restrict z = z1T + h * B;
        const REAL bias = b1[h];
        for (int i = 0; i < B; i++)
            z[i] = 1 / (1 + EXP(-(z[i] + bias)));
    }
    /* a2 = z1 W2 + b2 */
    for (int o = 0; o < O; o++) {
        REAL *restrict y = yT + o * B;
        for (int i = 0; i < B; i++)
            y[i] = b2[o];
        for (int h = 0; h < H; h++)
            CONCAT(add_scaled_, REAL)(B, W2b2[h * O + o], z1T + h * B, y);
    }
    /* y = softmax(a2), each input's maximum subtracted first so that exp cannot overflow */
    for (int i = 0; i < B; i++)
        column[i] = yT[i];
    for (int o = 1; o < O; o++) {
        const REAL *restrict y = yT + o * B;
        for (int i = 0; i < B; i++)
            column[i] = y[i] > column[i] ? y[i] : column[i];
    }
    for (int o = 0; o < O; o++) {
        REAL *restrict y = yT + o * B;
        for (int i = 0; i < B; i++)
            y[i] = EXP(y[i] - column[i]);
    }
    for (int i = 0; i < B; i++)
        column[i] = yT[i];
    for (int o = 1; o < O; o++) {
        const REAL *restrict y = yT + o * B;
        for (int i = 0; i < B; i++)
            column[i] += y[i];
    }
    for (int o = 0; o < O; o++) {
        REAL *restrict y = yT + o * B;
        for (int i = 0; i < B; i++)
            y[i] /= column[i];
    }

    /* backward. Softmax with cross-entropy: dL/da2 = (y - t) / B, times p / (p + 1e-7), the exact
     * derivative of the loss's log(p + 1e-7) (without it backprop is off by about 1e-6 relative,
     * more than a gradient check should tolerate); times scale. */
    const REAL per_input = scale / (REAL)B;
    for (int i = 0; i < B; i++) {
        REAL *true_class = yT + labels[i] * B + i;
        const REAL pt = *true_class;
        p[i] = pt;
        factor[i] = pt / (pt + (REAL)1e-7) * per_input;
        *true_class = pt - 1;
    }
    for (int o = 0; o < O; o++) {
        REAL *restrict y = yT + o * B;
        for (int i = 0; i < B; i++)
            y[i] *= factor[i];
    }
    /* dW2 = z1^T dL/da2, db2 = its sum over the batch */
    for (int h = 0; h < H; h++)
        for (int o = 0; o < O; o++)
            g_W2b2[h * O + o] = CONCAT(dot_of_, REAL)(B, z1T + h * B, yT + o * B);
    for (int o = 0; o < O; o++)
        g_W2b2[H * O + o] = CONCAT(sum_of_, REAL)(B, yT + o * B);
    /* dL/da1 = (dL/da2 W2^T) * sigmoid'(a1), with sigmoid'(a1) = z1 (1 - z1) = z1 - z1^2; db1 its sum */
    for (int h = 0; h < H; h++) {
        REAL *restrict d = dz1T + h * B;
        const REAL *restrict z = z1T + h * B;
        for (int i = 0; i < B; i++)
            d[i] = 0;
        for (int o = 0; o < O; o++)
            CONCAT(add_scaled_, REAL)(B, W2b2[h * O + o], yT + o * B, d);
        for (int i = 0; i < B; i++)
            d[i] *= z[i] - z[i] * z[i];
        g_b1[h] = CONCAT(sum_of_, REAL)(B, d);
    }
}
